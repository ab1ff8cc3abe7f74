//! Prompts to text states: the bundle's Hugging Face `tokenizer.json` (via the `tokenizers`
//! crate), padded or truncated to the bundle's sequence length, then the text encoder, with
//! each prompt's states cached (the same prompts recur for every window of a video).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3, ArrayD, Axis, Ix2};
use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::error::{ModelError, Result};
use super::network::{Input, Network};

pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    path: PathBuf,
    sequence_length: usize,
}

impl PromptTokenizer {
    /// Loads `tokenizer.json`, fixing padding (with `pad_id`) and truncation at
    /// `sequence_length` whatever the file says.
    ///
    /// # Errors
    /// `Tokenizer` naming the file.
    pub fn load(path: &Path, sequence_length: usize, pad_id: u32) -> Result<PromptTokenizer> {
        let err = |cause: String| ModelError::Tokenizer {
            path: path.to_path_buf(),
            cause,
        };
        if !path.exists() {
            return Err(err("file not found".into()));
        }
        let mut tokenizer = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        let pad_token = tokenizer
            .id_to_token(pad_id)
            .ok_or_else(|| err(format!("pad_token_id {pad_id} is not in the vocabulary")))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(sequence_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: sequence_length,
                ..Default::default()
            }))
            .map_err(|e| err(e.to_string()))?;
        Ok(PromptTokenizer {
            tokenizer,
            path: path.to_path_buf(),
            sequence_length,
        })
    }

    pub fn sequence_length(&self) -> usize {
        self.sequence_length
    }

    /// Token ids, one row per prompt, `[B, S]`.
    pub fn encode(&self, prompts: &[&str]) -> Result<Array2<i64>> {
        let encodings = self
            .tokenizer
            .encode_batch(prompts.to_vec(), true)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                cause: e.to_string(),
            })?;
        let mut ids = Array2::<i64>::zeros((prompts.len(), self.sequence_length));
        for (row, enc) in encodings.iter().enumerate() {
            for (col, &id) in enc.get_ids().iter().take(self.sequence_length).enumerate() {
                ids[[row, col]] = id as i64;
            }
        }
        Ok(ids)
    }
}

/// The text encoder with its tokenizer and a per-prompt cache of `[S, D]` states.
pub struct TextEncoder {
    network: Network,
    tokenizer: PromptTokenizer,
    cache: HashMap<String, ArrayD<f32>>,
}

/// More distinct prompts than this and the cache starts over (a batch job's prompt list is
/// far shorter; a stream that changes its prompt every window must not grow without bound).
const CACHE_LIMIT: usize = 256;

impl TextEncoder {
    pub fn new(network: Network, tokenizer: PromptTokenizer) -> TextEncoder {
        TextEncoder {
            network,
            tokenizer,
            cache: HashMap::new(),
        }
    }

    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// `last_hidden_state` for each prompt, `[B, S, D]`; prompts already seen come from the
    /// cache, the rest are encoded in one batch.
    pub fn encode(&mut self, prompts: &[&str]) -> Result<Array3<f32>> {
        let mut missing: Vec<&str> = prompts
            .iter()
            .copied()
            .filter(|p| !self.cache.contains_key(*p))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            if self.cache.len() + missing.len() > CACHE_LIMIT {
                self.cache.clear();
            }
            let ids = self.tokenizer.encode(&missing)?;
            let states = self.network.run_one(
                vec![("input_ids", Input::Ids(ids.into_dyn()))],
                "last_hidden_state",
            )?;
            for (i, p) in missing.iter().enumerate() {
                self.cache
                    .insert(p.to_string(), states.index_axis(Axis(0), i).to_owned());
            }
        }
        let rows: Vec<_> = prompts
            .iter()
            .map(|p| {
                self.cache[*p]
                    .view()
                    .into_dimensionality::<Ix2>()
                    .expect("text states are [S, D]")
            })
            .collect();
        ndarray::stack(Axis(0), &rows).map_err(|e| ModelError::Run {
            network: "text_encoder".into(),
            cause: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Bundle, RuntimeOptions};

    fn bundle(name: &str) -> Bundle {
        Bundle::open(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models")
                .join(name),
        )
        .unwrap()
    }

    /// Ids from the Python `tokenizers` package on the same file (models/export's tokenizer
    /// matches open_clip's): start 2046, end = pad 2047, truncation keeps the end token.
    #[test]
    fn tiny_clip_tokenizer_matches_python() {
        let tok = bundle("tiny").tokenizer().unwrap();
        let ids = tok
            .encode(&[
                "a red car driving on a road",
                "A man surfing a big wave, at sunset!",
                &"word ".repeat(100),
            ])
            .unwrap();
        assert_eq!(ids.shape(), &[3, 77]);
        let row = |r: usize, n: usize| ids.row(r).iter().take(n).copied().collect::<Vec<i64>>();
        assert_eq!(
            row(0, 10),
            vec![2046, 320, 736, 1615, 1203, 903, 525, 320, 1759, 2047]
        );
        assert_eq!(
            row(1, 16),
            vec![
                2046, 320, 786, 1090, 69, 519, 320, 1205, 869, 563, 267, 536, 968, 1167, 256, 2047
            ]
        );
        assert!(
            ids.row(0).iter().skip(9).all(|&i| i == 2047),
            "padded with 2047"
        );
        assert_eq!(ids[[2, 75]], 641);
        assert_eq!(ids[[2, 76]], 2047, "truncation keeps the end token");
    }

    #[test]
    fn oracle_word_level_tokenizer() {
        let tok = bundle("oracle").tokenizer().unwrap();
        let ids = tok.encode(&["a red car", "Red, GREEN and blue!"]).unwrap();
        assert_eq!(ids.row(0).to_vec()[..4], [9, 2, 14, 0]);
        assert_eq!(ids.row(1).to_vec()[..7], [2, 89, 3, 62, 4, 91, 0]);
    }

    #[test]
    fn oracle_text_states_and_cache() {
        let b = bundle("oracle");
        let mut enc = b.text_encoder(&RuntimeOptions::default()).unwrap();
        let states = enc.encode(&["red", "a blue car", "red"]).unwrap();
        assert_eq!(states.shape(), &[3, 16, 4]);
        // "red" → E[red] at position 0, zeros elsewhere (CONTEXTDIFF oracle definition).
        assert_eq!(
            states.slice(ndarray::s![0, 0, ..]).to_vec(),
            vec![0.6, -0.6, -0.6, 0.0]
        );
        assert!(states
            .slice(ndarray::s![0, 1.., ..])
            .iter()
            .all(|&v| v == 0.0));
        let blue_sum: Vec<f32> = states
            .slice(ndarray::s![1, .., ..])
            .sum_axis(ndarray::Axis(0))
            .to_vec();
        assert_eq!(blue_sum, vec![-0.6, -0.6, 0.6, 0.0]);
        assert_eq!(
            states.slice(ndarray::s![0, .., ..]),
            states.slice(ndarray::s![2, .., ..])
        );
        // Two distinct prompts: one batched run; asking again runs nothing.
        assert_eq!(enc.network().busy().1, 1);
        enc.encode(&["a blue car", "red"]).unwrap();
        assert_eq!(enc.network().busy().1, 1);
        enc.encode(&["green"]).unwrap();
        assert_eq!(enc.network().busy().1, 2);
    }
}
