//! Latent-sized buffers kept between windows, for the whole process. A window's latents are
//! made in one stage and dropped in another (the encoder's clean latent dies in the edit
//! stage, the edited latents in the VAE decoder's), so a per-thread store never saw most of
//! them again, and each window paid for fresh memory: tens of MB the kernel must zero page by
//! page, which cost more than a cheap bundle's networks cost to run. Buffers are matched by
//! capacity, not shape, and made with some room to spare, so a window a frame longer than
//! those before it still reuses their memory (a clip's own full windows share one shape since
//! `Anchor::first_window`; a batch's next clip may carry more context).
//! Room never written is never touched, so it costs address space, not memory.

use std::sync::Mutex;

use ndarray::{Array, Dimension, Ix5};

use super::sampler::Latent;

/// Buffers kept at most (a guided window in flight holds about eight latent-sized buffers
/// across the stages).
const KEEP: usize = 8;

/// Room made beyond the size asked for, as a fraction of it (1/8: one more frame on an
/// 8-frame window).
const SPARE_DIV: usize = 8;

/// A store of buffers; the process has one ([`GLOBAL`]), tests make their own.
pub(crate) struct Pool {
    free: Mutex<Vec<Vec<f32>>>,
}

static GLOBAL: Pool = Pool::new();

impl Pool {
    pub(crate) const fn new() -> Pool {
        Pool {
            free: Mutex::new(Vec::new()),
        }
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Vec<Vec<f32>>> {
        // A panic elsewhere while holding it leaves a list of buffers, still sound.
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `n` elements with unspecified contents (a kept buffer, else a new zeroed one): the
    /// caller overwrites them. The smallest kept buffer with room for `n` is taken, unless
    /// it is half as large again: a guided batch's buffer lent to a single latent would hold
    /// its other half resident for nothing, and the next batch would need a new one.
    pub(crate) fn storage(&self, n: usize) -> Vec<f32> {
        let kept = {
            let mut free = self.free();
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, v)| (n..=n + n / 2).contains(&v.capacity()))
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i);
            best.map(|i| free.swap_remove(i))
        };
        let mut v = kept.unwrap_or_else(|| Vec::with_capacity(n + n / SPARE_DIV));
        // Longer: no write at all; shorter: only the new tail is written.
        v.resize(n, 0.0);
        v
    }

    /// A latent of shape `dim` with unspecified contents: the caller overwrites it.
    pub(crate) fn take(&self, dim: Ix5) -> Latent {
        let n = dim.size();
        Latent::from_shape_vec(dim, self.storage(n)).expect("storage(n) holds n elements")
    }

    /// Gives a latent's buffer back for a later `take` on any thread (a view into the
    /// middle of a larger buffer is simply dropped).
    pub(crate) fn give<D: Dimension>(&self, l: Array<f32, D>) {
        if !l.is_standard_layout() {
            return;
        }
        let (v, offset) = l.into_raw_vec_and_offset();
        if offset.unwrap_or(0) == 0 {
            self.give_storage(v);
        }
    }

    /// Gives a buffer back; past [`KEEP`] the longest-kept one is dropped.
    fn give_storage(&self, v: Vec<f32>) {
        if v.capacity() == 0 {
            return;
        }
        let mut free = self.free();
        if free.len() >= KEEP {
            free.remove(0);
        }
        free.push(v);
    }
}

/// [`Pool::storage`] on the process's store.
pub(crate) fn storage(n: usize) -> Vec<f32> {
    GLOBAL.storage(n)
}

/// [`Pool::take`] on the process's store.
pub(crate) fn take(dim: Ix5) -> Latent {
    GLOBAL.take(dim)
}

/// A copy of `src` in standard layout, from the process's store.
pub(crate) fn copy_of(src: &Latent) -> Latent {
    let mut l = take(src.raw_dim());
    l.assign(src);
    l
}

/// [`Pool::give`] to the process's store (a latent, or any other array made from
/// [`storage`]).
pub(crate) fn give<D: Dimension>(l: Array<f32, D>) {
    GLOBAL.give(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_across_threads_and_a_window_a_frame_longer_fits() {
        static POOL: Pool = Pool::new();
        let a = POOL.take(Ix5(1, 4, 8, 16, 16));
        let ptr = a.as_ptr();
        // Dropped on another thread, as a window's latent is in a later stage.
        std::thread::spawn(move || POOL.give(a)).join().unwrap();
        // One frame more than the first window: the same memory.
        let b = POOL.take(Ix5(1, 4, 9, 16, 16));
        assert_eq!(b.as_ptr(), ptr, "the spare room took the longer window");
        assert_eq!(b.shape(), &[1, 4, 9, 16, 16]);
        POOL.give(b);
        // Two frames more does not fit: a new buffer.
        let c = POOL.take(Ix5(1, 4, 10, 16, 16));
        assert_ne!(c.as_ptr(), ptr);
        POOL.give(c);
        // The smallest buffer that fits is the one taken, but not one half as large again.
        let d = POOL.take(Ix5(1, 4, 2, 16, 16));
        assert_ne!(d.as_ptr(), ptr);
        let d = POOL.take(Ix5(1, 4, 7, 16, 16));
        assert_eq!(d.as_ptr(), ptr);
        // A view offset into its buffer is not kept.
        let mut e = Latent::zeros(Ix5(2, 1, 1, 2, 2));
        e.slice_collapse(ndarray::s![1.., .., .., .., ..]);
        POOL.give(e);
        assert_eq!(POOL.free().len(), 1, "the 10-frame buffer");
        for _ in 0..2 * KEEP {
            POOL.give(Latent::zeros(Ix5(1, 1, 1, 1, 1)));
        }
        assert_eq!(POOL.free().len(), KEEP, "no more than KEEP are kept");

        let src = Latent::from_elem(Ix5(1, 1, 1, 2, 2), 3.0);
        assert_eq!(copy_of(&src), src);
    }
}
