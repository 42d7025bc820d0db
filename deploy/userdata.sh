#!/bin/bash
# EC2 userdata for an autoscaling group of Netsy nodes (Debian or Ubuntu AMI).
#
# Everything the node needs comes from the instance's own tags (instance metadata tags must
# be enabled on the launch template) or, failing that, from SSM Parameter Store:
#   tag netsy:bucket   / parameter /netsy/bucket    the bucket
#   tag netsy:prefix   / parameter /netsy/prefix    the key prefix (cluster name)
#   tag netsy:release  / parameter /netsy/release   URL of the netsy binary (s3:// or https://)
#   parameter /netsy/tls/{ca.pem,server.pem,server-key.pem} (SecureString), optional
# The instance profile needs deploy/iam-policy.json (plus ssm:GetParameter on /netsy/* if
# parameters are used). Nothing on the VM is state: terminate it at will.
set -euo pipefail

imds=http://169.254.169.254/latest
token=$(curl -fsS -X PUT "$imds/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
meta() { curl -fsS -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/$1"; }
region=$(meta placement/region)
instance=$(meta instance-id)

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq awscli curl >/dev/null

setting() { # tag-name parameter-name
  meta "tags/instance/$1" 2>/dev/null ||
    aws ssm get-parameter --region "$region" --name "$2" --query Parameter.Value --output text 2>/dev/null ||
    true
}
bucket=$(setting netsy:bucket /netsy/bucket)
prefix=$(setting netsy:prefix /netsy/prefix)
release=$(setting netsy:release /netsy/release)
[ -n "$bucket" ] || { echo "userdata: no netsy:bucket tag and no /netsy/bucket parameter" >&2; exit 1; }
[ -n "$release" ] || { echo "userdata: no netsy:release tag and no /netsy/release parameter" >&2; exit 1; }

case "$release" in
  s3://*) aws s3 cp --region "$region" "$release" /usr/local/bin/netsy ;;
  *) curl -fsSL -o /usr/local/bin/netsy "$release" ;;
esac
chmod 755 /usr/local/bin/netsy
id netsy >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin netsy

install -d -m 750 -o root -g netsy /etc/netsy /etc/netsy/tls
tls=false
for f in ca.pem server.pem server-key.pem; do
  if aws ssm get-parameter --region "$region" --with-decryption --name "/netsy/tls/$f" \
      --query Parameter.Value --output text > "/etc/netsy/tls/$f" 2>/dev/null; then
    tls=true
  else
    rm -f "/etc/netsy/tls/$f"; tls=false; break
  fi
done
chgrp netsy /etc/netsy/tls/* 2>/dev/null || true
chmod 640 /etc/netsy/tls/* 2>/dev/null || true

private_ip=$(meta local-ipv4)
{
  echo "NETSY_S3_BUCKET_NAME=$bucket"
  echo "NETSY_S3_KEY_PREFIX=$prefix"
  echo "AWS_REGION=$region"
  echo "NETSY_NAME=$instance"
  echo "NETSY_LISTEN_CLIENTS_ADDR=0.0.0.0:2379"
  echo "NETSY_LISTEN_METRICS_ADDR=0.0.0.0:2381"
  echo "NETSY_LOG_FORMAT=json"
  echo "NETSY_SHUTDOWN_TIMEOUT_SECONDS=20"
  if [ "$tls" = true ]; then
    echo "NETSY_ADVERTISE_CLIENT_URLS=https://$private_ip:2379"
    echo "NETSY_CERT_FILE=/etc/netsy/tls/server.pem"
    echo "NETSY_KEY_FILE=/etc/netsy/tls/server-key.pem"
    echo "NETSY_TRUSTED_CA_FILE=/etc/netsy/tls/ca.pem"
    echo "NETSY_CLIENT_CERT_AUTH=true"
  else
    echo "NETSY_ADVERTISE_CLIENT_URLS=http://$private_ip:2379"
  fi
} > /etc/netsy/netsy.env
chmod 640 /etc/netsy/netsy.env
chgrp netsy /etc/netsy/netsy.env

cat > /etc/systemd/system/netsy.service <<'UNIT'
# systemd unit for Netsy on a VM (e.g. an autoscaling-group instance; see userdata.sh).
# Configuration comes from /etc/netsy/netsy.env (see netsy.env). The node keeps nothing
# locally: its state is the bucket, so the unit needs no StateDirectory.
[Unit]
Description=Netsy: etcd API backed by S3
Documentation=https://github.com/netsy-dev/netsy
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
User=netsy
Group=netsy
EnvironmentFile=/etc/netsy/netsy.env
ExecStart=/usr/local/bin/netsy serve
# SIGTERM: stop accepting, drain in-flight commits (NETSY_SHUTDOWN_TIMEOUT_SECONDS), release
# the leader lease so a replacement takes over at once. Give it room before SIGKILL.
KillSignal=SIGTERM
TimeoutStopSec=45
Restart=always
RestartSec=2
LimitNOFILE=65536
# Hardening: the binary needs the network and read access to its certificates only.
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
CapabilityBoundingSet=

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now netsy
# Health checks on port 2381: /livez for the ASG (a node replaying or between leaders is
# alive), /readyz for the load balancer's target group (200 once the bucket is replayed and
# the node leads, or follows the leader and has caught up with it; 503 while no node leads).
# Every node of the group serves: a kube-apiserver beside each can use 127.0.0.1:2379.
# Terminating an instance stops the unit with SIGTERM: a leader hands over to a follower
# before it drains, so scale-in and instance refresh cost writes a fraction of a second.
