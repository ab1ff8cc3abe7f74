//! Latent buffers kept per thread between runs of the sampler. A stage thread samples window
//! after window at one shape; fresh latent-sized buffers every window cost more in page
//! faults (the kernel zeroing new memory) than a cheap bundle's networks cost to run.

use std::cell::RefCell;

use ndarray::Ix5;

use super::sampler::Latent;

/// Buffers kept per thread at most (a guided run uses three, five in `x0_pred` mode).
const KEEP: usize = 8;

thread_local! {
    static FREE: RefCell<Vec<Latent>> = const { RefCell::new(Vec::new()) };
}

/// A latent of shape `dim` with unspecified contents (a reused buffer, else a new zeroed
/// one): the caller overwrites it. A miss drops the buffers of other shapes, which belonged
/// to another window size.
pub(crate) fn take(dim: Ix5) -> Latent {
    FREE.with(|free| {
        let mut free = free.borrow_mut();
        match free.iter().position(|l| l.raw_dim() == dim) {
            Some(i) => free.swap_remove(i),
            None => {
                free.clear();
                Latent::zeros(dim)
            }
        }
    })
}

/// A copy of `src` in standard layout.
pub(crate) fn copy_of(src: &Latent) -> Latent {
    let mut l = take(src.raw_dim());
    l.assign(src);
    l
}

/// Gives a buffer back for the next `take` on this thread.
pub(crate) fn give(l: Latent) {
    if !l.is_standard_layout() {
        return;
    }
    FREE.with(|free| {
        let mut free = free.borrow_mut();
        if free.len() >= KEEP {
            free.remove(0);
        }
        free.push(l);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_at_their_shape_and_a_miss_drops_other_shapes() {
        let a = take(Ix5(1, 2, 3, 4, 5));
        let ptr = a.as_ptr();
        give(a);
        let b = take(Ix5(1, 2, 3, 4, 5));
        assert_eq!(b.as_ptr(), ptr, "the same buffer again");
        give(b);
        let c = take(Ix5(1, 2, 4, 4, 5));
        assert_eq!(c.shape(), &[1, 2, 4, 4, 5]);
        FREE.with(|f| assert!(f.borrow().is_empty(), "the old shape was dropped"));
        let z = take(Ix5(1, 1, 1, 2, 2));
        let src = Latent::from_elem(Ix5(1, 1, 1, 2, 2), 3.0);
        give(z);
        assert_eq!(copy_of(&src), src);
    }
}
