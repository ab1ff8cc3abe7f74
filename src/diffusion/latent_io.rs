//! Inverted latents on disk (`.npy`, float32): an edit of an archive with a new prompt can
//! start from a saved inversion instead of redoing it. Written atomically.

use std::path::Path;

use ndarray::ArrayD;
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

use super::DiffusionError;

/// # Errors
/// `Model` with the path and the I/O or format cause.
pub fn save_latent(path: &Path, latent: &ArrayD<f32>) -> Result<(), DiffusionError> {
    let err = |e: String| DiffusionError::Model(format!("{}: {e}", path.display()));
    let mut bytes = Vec::new();
    latent
        .write_npy(&mut bytes)
        .map_err(|e| err(e.to_string()))?;
    crate::atomic::write_atomic(path, &bytes).map_err(|e| err(e.to_string()))
}

/// # Errors
/// `Model` with the path and the cause (missing file, not an f32 .npy).
pub fn load_latent(path: &Path) -> Result<ArrayD<f32>, DiffusionError> {
    let f = std::fs::File::open(path)
        .map_err(|e| DiffusionError::Model(format!("{}: {e}", path.display())))?;
    ArrayD::<f32>::read_npy(f)
        .map_err(|e| DiffusionError::Model(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("inv.npy");
        let a = ndarray::Array::from_shape_fn(ndarray::IxDyn(&[1, 4, 2, 3, 3]), |i| {
            i[1] as f32 - 0.5 * i[4] as f32
        });
        save_latent(&p, &a).unwrap();
        assert_eq!(load_latent(&p).unwrap(), a);
        assert!(load_latent(&d.path().join("none.npy"))
            .unwrap_err()
            .to_string()
            .contains("none.npy"));
    }
}
