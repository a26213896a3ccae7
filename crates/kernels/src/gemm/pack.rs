//! The panel layout of the weights, packed once at load.

/// Packs `w: [n, k]` row-major into panels of `nr` columns:
/// `dst[p * k * nr + kk * nr + c] = w[(p * nr + c) * k + kk]`, zero where `p * nr + c >= n`.
///
/// # Panics
/// If `dst` is shorter than `n.div_ceil(nr) * nr * k`.
pub(super) fn panels(w: &[f32], n: usize, k: usize, nr: usize, dst: &mut [f32]) {
    let panels = n.div_ceil(nr);
    let dst = &mut dst[..panels * nr * k];
    for (p, panel) in dst.chunks_exact_mut(nr * k.max(1)).enumerate().take(panels) {
        for c in 0..nr.min(n - p * nr) {
            let row = &w[(p * nr + c) * k..(p * nr + c + 1) * k];
            for (kk, v) in row.iter().enumerate() {
                panel[kk * nr + c] = *v;
            }
        }
    }
}

/// The inverse of [`panels`].
pub(super) fn unpanel(src: &[f32], n: usize, k: usize, nr: usize) -> Vec<f32> {
    let mut w = vec![0.0; n * k];
    for j in 0..n {
        let (p, c) = (j / nr, j % nr);
        for kk in 0..k {
            w[j * k + kk] = src[p * k * nr + kk * nr + c];
        }
    }
    w
}
