//! One cache entry on disk: a window's inverted latents, compressed and checksummed.
//!
//! ```text
//! b"CTXDINV1"  u32 LE header length  header (JSON)  payload
//! ```
//! The header names the key (so a file renamed or copied into the wrong place is refused),
//! the arrays' shapes, the raw length and the SHA-256 of the raw bytes. The payload is the
//! arrays' little-endian f32 bytes, byte-shuffled (all first bytes of every float, then all
//! second bytes, ...: sign and exponent bytes repeat, mantissas do not) and LZ4-compressed.
//! Every check failing on read is a corrupt entry, never a wrong latent.

use ndarray::Array5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"CTXDINV1";
const CODEC: &str = "f32le-shuffle4-lz4";
/// Refuse absurd headers before allocating for them.
const MAX_HEADER: usize = 64 * 1024;

/// What is kept per window: the inverted latent and, when local blending needs it, the
/// inversion trajectory (clean latent first); after an edit-friendly inversion, its
/// residuals too.
#[derive(Debug, Clone, PartialEq)]
pub struct Inverted {
    pub x_t: Array5<f32>,
    pub trajectory: Vec<Array5<f32>>,
    pub residuals: Vec<Array5<f32>>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    key: String,
    codec: String,
    /// Shapes: x_t first, then each trajectory step, then each residual.
    shapes: Vec<[usize; 5]>,
    /// How many of the last arrays are residuals (entries from before they existed: none).
    #[serde(default)]
    residuals: usize,
    raw_bytes: u64,
    sha256: String,
}

/// Why an entry could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Corrupt(pub String);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn shuffle(raw: &[u8]) -> Vec<u8> {
    let n = raw.len() / 4;
    let mut out = vec![0u8; raw.len()];
    for (i, chunk) in raw.chunks_exact(4).enumerate() {
        for (b, v) in chunk.iter().enumerate() {
            out[b * n + i] = *v;
        }
    }
    out
}

fn unshuffle(shuffled: &[u8]) -> Vec<u8> {
    let n = shuffled.len() / 4;
    let mut out = vec![0u8; shuffled.len()];
    for (i, chunk) in out.chunks_exact_mut(4).enumerate() {
        for (b, v) in chunk.iter_mut().enumerate() {
            *v = shuffled[b * n + i];
        }
    }
    out
}

/// The file's bytes for `value` under `key`.
pub fn encode(key: &str, value: &Inverted) -> Vec<u8> {
    let arrays: Vec<&Array5<f32>> = std::iter::once(&value.x_t)
        .chain(value.trajectory.iter())
        .chain(value.residuals.iter())
        .collect();
    let mut raw = Vec::with_capacity(arrays.iter().map(|a| a.len() * 4).sum());
    let mut shapes = Vec::with_capacity(arrays.len());
    for a in &arrays {
        let d = a.dim();
        shapes.push([d.0, d.1, d.2, d.3, d.4]);
        // `iter` walks in logical (row-major) order whatever the memory layout.
        for v in a.iter() {
            raw.extend_from_slice(&v.to_le_bytes());
        }
    }
    let header = Header {
        key: key.to_string(),
        codec: CODEC.into(),
        shapes,
        residuals: value.residuals.len(),
        raw_bytes: raw.len() as u64,
        sha256: hex(&Sha256::digest(&raw)),
    };
    let header = serde_json::to_vec(&header).expect("a header serializes");
    let payload = lz4_flex::compress(&shuffle(&raw));
    let mut out = Vec::with_capacity(12 + header.len() + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&payload);
    out
}

/// Reads back an entry written by [`encode`] under `key`.
///
/// # Errors
/// [`Corrupt`] saying which check failed (magic, header, key, length, checksum, shape).
pub fn decode(key: &str, bytes: &[u8]) -> Result<Inverted, Corrupt> {
    let bad = |s: &str| Corrupt(s.to_string());
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(bad("not a ctxd inversion entry (bad magic)"));
    }
    let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    if len > MAX_HEADER || 12 + len > bytes.len() {
        return Err(bad("truncated header"));
    }
    let header: Header = serde_json::from_slice(&bytes[12..12 + len])
        .map_err(|e| Corrupt(format!("unreadable header: {e}")))?;
    if header.key != key {
        return Err(Corrupt(format!(
            "holds key {}, not {key}",
            header.key.get(..16).unwrap_or(&header.key)
        )));
    }
    if header.codec != CODEC {
        return Err(Corrupt(format!("unknown codec {}", header.codec)));
    }
    let floats: usize = header
        .shapes
        .iter()
        .map(|s| s.iter().product::<usize>())
        .sum();
    if header.shapes.len() <= header.residuals || (floats as u64) * 4 != header.raw_bytes {
        return Err(bad("shapes disagree with the stored length"));
    }
    // The decompressor is told the exact size, so a lying payload cannot make it allocate more.
    let shuffled = lz4_flex::decompress(&bytes[12 + len..], header.raw_bytes as usize)
        .map_err(|e| Corrupt(format!("payload does not decompress: {e}")))?;
    if shuffled.len() as u64 != header.raw_bytes {
        return Err(bad("payload is truncated"));
    }
    let raw = unshuffle(&shuffled);
    if hex(&Sha256::digest(&raw)) != header.sha256 {
        return Err(bad("checksum mismatch"));
    }
    let mut values = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")));
    let mut arrays = header.shapes.iter().map(|s| {
        let n = s.iter().product();
        Array5::from_shape_vec(
            (s[0], s[1], s[2], s[3], s[4]),
            values.by_ref().take(n).collect(),
        )
        .map_err(|e| Corrupt(e.to_string()))
    });
    let x_t = arrays.next().ok_or_else(|| bad("no arrays"))??;
    let mut trajectory = arrays.collect::<Result<Vec<_>, _>>()?;
    let residuals = trajectory.split_off(trajectory.len() - header.residuals);
    Ok(Inverted {
        x_t,
        trajectory,
        residuals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(trajectory: usize) -> Inverted {
        sample_with(trajectory, 0)
    }

    fn sample_with(trajectory: usize, residuals: usize) -> Inverted {
        let a = |k: f32| {
            Array5::from_shape_fn((1, 4, 3, 2, 5), |(_, c, f, y, x)| {
                (c as f32 - 1.5) * 0.37 + f as f32 * k - y as f32 * 1e-3 + x as f32 * 1e7
            })
        };
        Inverted {
            x_t: a(0.5),
            trajectory: (0..trajectory).map(|i| a(i as f32)).collect(),
            residuals: (0..residuals).map(|i| a(-(i as f32))).collect(),
        }
    }

    #[test]
    fn round_trips_bit_exactly_with_and_without_a_trajectory() {
        for (n, r) in [(0, 0), (3, 0), (4, 3)] {
            let v = sample_with(n, r);
            let bytes = encode("k1", &v);
            let back = decode("k1", &bytes).unwrap();
            assert_eq!((back.trajectory.len(), back.residuals.len()), (n, r));
            assert_eq!(back, v);
        }
        // A non-standard layout is stored in logical order.
        let mut v = sample(0);
        v.x_t = v.x_t.permuted_axes([0, 1, 2, 4, 3]).to_owned();
        let t = v.x_t.clone().reversed_axes();
        v.x_t = t.reversed_axes();
        assert_eq!(decode("k", &encode("k", &v)).unwrap(), v);
    }

    #[test]
    fn every_kind_of_damage_is_detected() {
        let bytes = encode("k1", &sample(2));
        let check = |b: &[u8], want: &str| {
            let e = decode("k1", b).unwrap_err().0;
            assert!(e.contains(want), "{e} should mention {want}");
        };
        check(&bytes[..bytes.len() - 7], "");
        check(&bytes[..20], "truncated");
        check(b"hello", "magic");
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(decode("k1", &flipped).is_err());
        assert!(decode("k2", &bytes).unwrap_err().0.contains("holds key"));
        // A header that lies about the size cannot make the reader allocate for it.
        let mut lying = bytes.clone();
        lying[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        check(&lying, "truncated header");
    }

    #[test]
    fn shuffle_is_its_own_inverse_and_helps_compression() {
        // Noise-like values, as an inverted latent is: random mantissas, few exponents.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let raw: Vec<u8> = (0..4096)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 40) as f32 / (1u64 << 24) as f32;
                ((u - 0.5) * 4.0).to_le_bytes()
            })
            .collect();
        assert_eq!(unshuffle(&shuffle(&raw)), raw);
        let plain = lz4_flex::compress(&raw).len();
        let shuffled = lz4_flex::compress(&shuffle(&raw)).len();
        assert!(shuffled < plain, "{shuffled} vs {plain}");
    }
}
