//! CRC-64/XZ: the polynomial of Go's `crc64.ECMA` table, reflected, with the all-ones initial
//! value and final xor that Go's `crc64.Checksum` applies. `crc64fast` computes exactly this
//! (a golden test pins it so the convention cannot drift).

/// CRC-64/XZ of `data`.
pub fn crc64(data: &[u8]) -> u64 {
    let mut d = Digest::new();
    d.update(data);
    d.finish()
}

/// Incremental CRC-64/XZ, for the footer's CRC over all records.
pub struct Digest(crc64fast::Digest);

impl Digest {
    pub fn new() -> Self {
        Self(crc64fast::Digest::new())
    }
    pub fn update(&mut self, data: &[u8]) {
        self.0.write(data);
    }
    pub fn finish(&self) -> u64 {
        self.0.sum64()
    }
}
