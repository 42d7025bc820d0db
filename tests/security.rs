//! Secrets stay out of logs: a server on LocalStack, logging at debug level (the AWS SDK's
//! own debug lines included), with credentials from the standard chain (the environment),
//! never prints the secret key or a session token, however it is exercised.

mod common;

use common::{free_port, Netsy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_the_log() {
    common::s3_store("probe").await;
    let store = format!(
        "s3://{}/{}",
        common::s3_bucket(),
        common::unique_prefix("secrets")
    );
    let secret = "NetsyTestSecretKey0123456789abcdefSECRET";
    let token = "NetsyTestSessionTokenTOKEN0123456789";
    for format in ["text", "json"] {
        let mut n = Netsy::spawn_env(
            &store,
            free_port(),
            &["--log-format", format, "--leader-lease-seconds", "3"],
            &[
                ("AWS_SECRET_ACCESS_KEY", secret),
                ("AWS_SESSION_TOKEN", token),
                ("RUST_LOG", "debug"),
            ],
        );
        n.wait_ready().await;
        let mut c = n.client().await.unwrap();
        c.put("k", "v", None).await.unwrap();
        c.get("k", None).await.unwrap();
        n.terminate();
        let log = n.log();
        assert!(log.len() > 1000, "debug logging produced little:\n{log}");
        assert!(
            log.contains("committed chunk"),
            "the S3 path was exercised at debug level"
        );
        for (what, s) in [("secret key", secret), ("session token", token)] {
            assert!(!log.contains(s), "the {what} is in the {format} log");
            assert!(
                !log.contains(&s[..16]),
                "part of the {what} is in the {format} log"
            );
        }
    }
}
