//! A model bundle on disk: `bundle.toml` plus the files it lists. Opening checks that every
//! file exists; `verify` checks each one's sha256 against the manifest; `load` opens a
//! network's session and checks it against the contract.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::contract::Kind;
use super::error::{ModelError, Result};
use super::manifest::{Manifest, ModelFile};
use super::network::Network;
use super::runtime::RuntimeOptions;
use super::text::{PromptTokenizer, TextEncoder};

/// The preset `dir`'s manifest names for itself (`preset = ...`), if it can be read and
/// names one. Only a default: an unreadable bundle is reported where it is opened.
pub fn declared_preset(dir: &Path) -> Option<String> {
    read_manifest(dir).ok()?.preset
}

/// Reads and checks `dir/bundle.toml`.
///
/// # Errors
/// `NoBundle` when there is none, `Manifest` otherwise.
fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("bundle.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ModelError::NoBundle(dir.to_path_buf()),
        _ => ModelError::Manifest {
            path: path.clone(),
            cause: e.to_string(),
        },
    })?;
    Manifest::parse(&text, &path)
}

/// `preset` when given, else what `bundle` declares (`declared_preset`), else None (the
/// default preset): how every front end picks a job's preset.
pub fn preset_or_declared(preset: Option<&str>, bundle: Option<&Path>) -> Option<String> {
    preset
        .map(str::to_owned)
        .or_else(|| bundle.and_then(declared_preset))
}

#[derive(Debug, Clone)]
pub struct Bundle {
    dir: PathBuf,
    manifest: Manifest,
}

impl Bundle {
    /// Reads `dir/bundle.toml` and checks that every file it lists is there.
    ///
    /// # Errors
    /// `NoBundle`, `Manifest`, `MissingFile`.
    pub fn open(dir: &Path) -> Result<Bundle> {
        let manifest = read_manifest(dir)?;
        let bundle = Bundle {
            dir: dir.to_path_buf(),
            manifest,
        };
        for (network, f) in &bundle.manifest.models {
            for file in std::iter::once(&f.file).chain(f.external_data.as_ref()) {
                let p = bundle.dir.join(file);
                if !p.is_file() {
                    return Err(ModelError::MissingFile {
                        path: p,
                        network: network.clone(),
                    });
                }
            }
        }
        let tok = bundle.dir.join(&bundle.manifest.text.tokenizer);
        if !tok.is_file() {
            return Err(ModelError::MissingFile {
                path: tok,
                network: "text.tokenizer".into(),
            });
        }
        Ok(bundle)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn has(&self, kind: Kind) -> bool {
        self.manifest.models.contains_key(kind.name())
    }

    pub fn entry(&self, kind: Kind) -> Option<&ModelFile> {
        self.manifest.models.get(kind.name())
    }

    pub fn path_of(&self, kind: Kind) -> Option<PathBuf> {
        self.entry(kind).map(|f| self.dir.join(&f.file))
    }

    /// Checks every file's sha256 against the manifest (external weights included).
    ///
    /// # Errors
    /// `HashMismatch` naming the file.
    pub fn verify(&self) -> Result<()> {
        for f in self.manifest.models.values() {
            check_hash(&self.dir.join(&f.file), &f.sha256)?;
            if let (Some(data), Some(hash)) = (&f.external_data, &f.external_data_sha256) {
                check_hash(&self.dir.join(data), hash)?;
            }
        }
        Ok(())
    }

    /// The hashes as recorded (for reports).
    pub fn hashes(&self) -> Vec<(String, String)> {
        self.manifest
            .models
            .iter()
            .map(|(k, f)| (k.clone(), f.sha256.clone()))
            .collect()
    }

    /// Opens one network.
    ///
    /// # Errors
    /// `MissingFile` if the bundle has no such network; `Load`, `Device`, `Signature`.
    pub fn load(&self, kind: Kind, opts: &RuntimeOptions) -> Result<Network> {
        let path = self.path_of(kind).ok_or_else(|| ModelError::MissingFile {
            path: self.dir.join(format!("{}.onnx", kind.name())),
            network: kind.name().into(),
        })?;
        Network::load(kind, &path, &self.manifest, opts)
    }

    pub fn tokenizer(&self) -> Result<PromptTokenizer> {
        let t = &self.manifest.text;
        PromptTokenizer::load(
            &self.dir.join(&t.tokenizer),
            t.sequence_length,
            t.pad_token_id,
        )
    }

    /// The tokenizer for `clip_text` (same file, its own sequence length).
    pub fn clip_tokenizer(&self) -> Result<PromptTokenizer> {
        let t = &self.manifest.text;
        let len = self
            .entry(Kind::ClipText)
            .and_then(|f| f.sequence_length)
            .unwrap_or(t.sequence_length);
        PromptTokenizer::load(&self.dir.join(&t.tokenizer), len, t.pad_token_id)
    }

    /// What identifies what this bundle does, as hex sha256: its manifest (which holds every
    /// network's sha256, the schedule and the latent scale) and its tokenizer. Jobs and
    /// cached inversions are keyed by it, never by the folder's name.
    ///
    /// # Errors
    /// `Manifest` when the manifest or the tokenizer cannot be read.
    pub fn identity(&self) -> Result<String> {
        let mut hasher = Sha256::new();
        for file in [
            self.dir.join("bundle.toml"),
            self.dir.join(&self.manifest.text.tokenizer),
        ] {
            let bytes = std::fs::read(&file).map_err(|e| ModelError::Manifest {
                path: file.clone(),
                cause: e.to_string(),
            })?;
            hasher.update(Sha256::digest(&bytes));
        }
        Ok(hex(&hasher.finalize()))
    }

    pub fn text_encoder(&self, opts: &RuntimeOptions) -> Result<TextEncoder> {
        Ok(TextEncoder::new(
            self.load(Kind::TextEncoder, opts)?,
            self.tokenizer()?,
        ))
    }
}

/// sha256 of a file, streamed (weights can be gigabytes).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    sha256_reader(File::open(path)?)
}

/// sha256 of everything `r` gives, streamed.
pub fn sha256_reader(mut r: impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// sha256 of bytes, as hex.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes already computed in this process, by file, with the size and modification time
/// they were computed at: the daemon verifies its bundle for every job, and weights can be
/// gigabytes; an unchanged file is not read again, a changed one is.
type Stamp = (u64, Option<std::time::SystemTime>);
static HASHED: std::sync::Mutex<Option<std::collections::HashMap<PathBuf, (Stamp, String)>>> =
    std::sync::Mutex::new(None);

fn cached_sha256(path: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    let stamp = (meta.len(), meta.modified().ok());
    let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if let Ok(guard) = HASHED.lock() {
        if let Some((s, h)) = guard.as_ref().and_then(|m| m.get(&key)) {
            if *s == stamp {
                return Ok(h.clone());
            }
        }
    }
    let h = sha256_file(path)?;
    if let Ok(mut guard) = HASHED.lock() {
        guard
            .get_or_insert_with(Default::default)
            .insert(key, (stamp, h.clone()));
    }
    Ok(h)
}

fn check_hash(path: &Path, expected: &str) -> Result<()> {
    let actual = cached_sha256(path)?;
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(ModelError::HashMismatch {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Bundles under `root`: every folder (one level down, or `root` itself) with a bundle.toml.
/// Each comes with its parse result, so a broken bundle is listed with its error.
pub fn find_bundles(root: &Path) -> Vec<(PathBuf, Result<Bundle>)> {
    let mut found = Vec::new();
    if root.join("bundle.toml").is_file() {
        found.push((root.to_path_buf(), Bundle::open(root)));
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("bundle.toml").is_file())
            .collect();
        dirs.sort();
        for d in dirs {
            let b = Bundle::open(&d);
            found.push((d, b));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RuntimeOptions;

    #[test]
    fn the_demo_bundle_names_its_preset_and_a_given_preset_wins() {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let demo = models.join("demo");
        assert_eq!(declared_preset(&demo).as_deref(), Some("demo"));
        assert_eq!(declared_preset(&models.join("oracle")), None);
        assert_eq!(declared_preset(&models.join("nosuch")), None);
        assert_eq!(
            preset_or_declared(None, Some(&demo)).as_deref(),
            Some("demo")
        );
        assert_eq!(
            preset_or_declared(Some("fast"), Some(&demo)).as_deref(),
            Some("fast")
        );
        assert_eq!(preset_or_declared(None, None), None);
    }

    /// A writable copy of a committed bundle.
    fn copy_bundle(name: &str) -> tempfile::TempDir {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(name);
        let dst = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, dst.path().join(p.file_name().unwrap())).unwrap();
            }
        }
        dst
    }

    fn set_hash(dir: &Path, file: &str) {
        let toml = dir.join("bundle.toml");
        let text = std::fs::read_to_string(&toml).unwrap();
        let m = Manifest::parse(&text, &toml).unwrap();
        let old = &m.models.values().find(|f| f.file == file).unwrap().sha256;
        let new = sha256_file(&dir.join(file)).unwrap();
        std::fs::write(&toml, text.replace(old.as_str(), &new)).unwrap();
    }

    #[test]
    fn committed_bundles_verify() {
        for b in ["oracle", "oracle-shifted", "tiny"] {
            Bundle::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(b))
                .unwrap()
                .verify()
                .unwrap();
        }
    }

    #[test]
    fn changed_file_fails_its_hash() {
        let d = copy_bundle("oracle");
        let unet = d.path().join("unet.onnx");
        let mut bytes = std::fs::read(&unet).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&unet, bytes).unwrap();
        let e = Bundle::open(d.path())
            .unwrap()
            .verify()
            .unwrap_err()
            .to_string();
        assert!(e.contains("unet.onnx") && e.contains("sha256"), "{e}");
    }

    #[test]
    fn missing_file_is_named() {
        let d = copy_bundle("oracle");
        std::fs::remove_file(d.path().join("vae_decoder.onnx")).unwrap();
        let e = Bundle::open(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("vae_decoder.onnx") && e.contains("missing"),
            "{e}"
        );
        let e = Bundle::open(&d.path().join("nowhere"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bundle.toml not found"), "{e}");
    }

    #[test]
    fn wrong_network_fails_the_contract_naming_the_tensor() {
        let d = copy_bundle("oracle");
        // A VAE decoder where the UNet should be.
        std::fs::copy(
            d.path().join("vae_decoder.onnx"),
            d.path().join("unet.onnx"),
        )
        .unwrap();
        set_hash(d.path(), "unet.onnx");
        let b = Bundle::open(d.path()).unwrap();
        b.verify().unwrap();
        let e = b
            .load(Kind::Unet, &RuntimeOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("unet.onnx") && e.contains("'sample'") && e.contains("missing input"),
            "{e}"
        );
    }

    #[test]
    fn hidden_size_must_match_the_graph() {
        let d = copy_bundle("oracle");
        let toml = d.path().join("bundle.toml");
        let text = std::fs::read_to_string(&toml)
            .unwrap()
            .replace("hidden_size = 4", "hidden_size = 8");
        std::fs::write(&toml, text).unwrap();
        let e = Bundle::open(d.path())
            .unwrap()
            .load(Kind::TextEncoder, &RuntimeOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("last_hidden_state") && e.contains("text.hidden_size = 8"),
            "{e}"
        );
    }
}
