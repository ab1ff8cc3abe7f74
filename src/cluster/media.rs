//! Where a cluster's videos travel: the JetStream object store (chunked, its own SHA-256
//! digest per object; ours, hex, in the object's metadata so a check needs no download), or a
//! folder every worker and submitter mounts (NFS, a bind mount). Either way a file is written
//! whole or not at all, under a name fixed by its job, and checked against its hash when read.

use std::path::{Path, PathBuf};

use async_nats::jetstream::{self, object_store};
use tokio::io::AsyncWriteExt;

use super::{nats_err, ClusterError, Result};
use crate::atomic::TempOutput;
use crate::model::bundle::sha256_file;

const SHA_KEY: &str = "sha256";

pub enum Media {
    Objects(Box<object_store::ObjectStore>),
    Shared(PathBuf),
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |e| ClusterError::File {
        path: path.to_path_buf(),
        cause: e.to_string(),
    }
}

impl Media {
    pub async fn open(
        js: &jetstream::Context,
        shared: Option<&Path>,
        replicas: usize,
    ) -> Result<Media> {
        if let Some(dir) = shared {
            if !dir.is_dir() {
                return Err(ClusterError::File {
                    path: dir.to_path_buf(),
                    cause: "the shared folder does not exist (every worker must mount it)".into(),
                });
            }
            return Ok(Media::Shared(dir.to_path_buf()));
        }
        let store = match js.get_object_store(super::MEDIA_BUCKET).await {
            Ok(s) => s,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: super::MEDIA_BUCKET.into(),
                    description: Some("ctxd inputs and outputs, by job key".into()),
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats_err("the object store")(&e))?,
        };
        Ok(Media::Objects(Box::new(store)))
    }

    /// Where this store keeps what it keeps, for messages.
    pub fn describe(&self) -> String {
        match self {
            Media::Objects(_) => format!("object store {}", super::MEDIA_BUCKET),
            Media::Shared(d) => format!("shared folder {}", d.display()),
        }
    }

    /// The hex SHA-256 of a stored object, if it exists.
    pub async fn sha256(&self, name: &str) -> Result<Option<String>> {
        match self {
            Media::Objects(s) => match s.info(name).await {
                Ok(info) if !info.deleted => Ok(info.metadata.get(SHA_KEY).cloned()),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
                Err(e) => Err(nats_err(format!("object {name}"))(&e)),
            },
            Media::Shared(dir) => {
                let path = dir.join(name);
                if !path.is_file() {
                    return Ok(None);
                }
                // the folder is trusted no more than the network: hash what is there
                let p = path.clone();
                let hash = tokio::task::spawn_blocking(move || sha256_file(&p))
                    .await
                    .map_err(|e| ClusterError::Config(e.to_string()))?
                    .map_err(file_err(&path))?;
                Ok(Some(hash))
            }
        }
    }

    /// Stores `path` as `name` (replacing what was there); its hex SHA-256 and size.
    pub async fn put(&self, name: &str, path: &Path) -> Result<(String, u64)> {
        let p = path.to_path_buf();
        let sha = tokio::task::spawn_blocking(move || sha256_file(&p))
            .await
            .map_err(|e| ClusterError::Config(e.to_string()))?
            .map_err(file_err(path))?;
        let size = std::fs::metadata(path).map_err(file_err(path))?.len();
        match self {
            Media::Objects(s) => {
                let mut f = tokio::fs::File::open(path).await.map_err(file_err(path))?;
                let meta = object_store::ObjectMetadata {
                    name: name.to_string(),
                    metadata: [(SHA_KEY.to_string(), sha.clone())].into(),
                    ..Default::default()
                };
                s.put(meta, &mut f)
                    .await
                    .map_err(|e| nats_err(format!("storing {} as {name}", path.display()))(&e))?;
            }
            Media::Shared(dir) => {
                let dest = dir.join(name);
                let (src, d) = (path.to_path_buf(), dest.clone());
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    if let Some(parent) = d.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    let t = TempOutput::new(&d)?;
                    std::fs::copy(&src, t.temp_path())?;
                    t.commit().map(|_| ())
                })
                .await
                .map_err(|e| ClusterError::Config(e.to_string()))?
                .map_err(file_err(&dest))?;
            }
        }
        Ok((sha, size))
    }

    /// Reads `name` into `dest` (a temporary name, renamed once whole and checked against
    /// `sha256`).
    pub async fn get(&self, name: &str, sha256: &str, dest: &Path) -> Result<()> {
        let out = TempOutput::new(dest).map_err(file_err(dest))?;
        let tmp = out.temp_path().to_path_buf();
        match self {
            Media::Objects(s) => {
                let mut obj = s
                    .get(name)
                    .await
                    .map_err(|e| nats_err(format!("object {name}"))(&e))?;
                let mut f = tokio::fs::File::create(&tmp)
                    .await
                    .map_err(file_err(&tmp))?;
                tokio::io::copy(&mut obj, &mut f)
                    .await
                    .map_err(|e| nats_err(format!("reading object {name}"))(&e))?;
                f.flush().await.map_err(file_err(&tmp))?;
                f.sync_all().await.map_err(file_err(&tmp))?;
            }
            Media::Shared(dir) => {
                let src = dir.join(name);
                tokio::fs::copy(&src, &tmp).await.map_err(file_err(&src))?;
            }
        }
        let t = tmp.clone();
        let got = tokio::task::spawn_blocking(move || sha256_file(&t))
            .await
            .map_err(|e| ClusterError::Config(e.to_string()))?
            .map_err(file_err(&tmp))?;
        if got != sha256 {
            return Err(ClusterError::Config(format!(
                "{name} in the {}: content hash {got} is not the expected {sha256}",
                self.describe()
            )));
        }
        out.commit().map(|_| ()).map_err(file_err(dest))
    }
}
