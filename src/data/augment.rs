//! The original's training augmentation, per image: a random 32 px crop of the image padded
//! by 4 zero pixels on every side, a horizontal flip with probability 1/2, and a rotation by
//! an angle uniform in [-15, 15] degrees about the centre (nearest pixel, zero fill).

use rand::Rng;

/// Padding of the random crop, in pixels.
pub const PADDING: i64 = 4;
/// The largest rotation, in degrees.
pub const MAX_DEGREES: f64 = 15.0;

/// Augment one image of `channels` planes of `rows x cols` pixels from `src` into `out`.
pub fn augment<R: Rng>(src: &[u8], out: &mut [u8], shape: [usize; 3], rng: &mut R) {
    let [channels, rows, cols] = shape;
    let dy = rng.gen_range(0..=2 * PADDING) - PADDING;
    let dx = rng.gen_range(0..=2 * PADDING) - PADDING;
    let flip = rng.gen_bool(0.5);
    let angle = rng.gen_range(-MAX_DEGREES..=MAX_DEGREES).to_radians();
    let (sin, cos) = angle.sin_cos();
    let (cy, cx) = ((rows as f64 - 1.0) / 2.0, (cols as f64 - 1.0) / 2.0);
    let plane = rows * cols;
    let (rows_i, cols_i) = (rows as i64, cols as i64);
    for y in 0..rows {
        // Undo the rotation (counter-clockwise on screen), then the flip, then the crop; the
        // terms that depend on the row only are computed once per row.
        let ry = y as f64 - cy;
        let (row_x, row_y) = (cx - sin * ry, cy + cos * ry);
        for x in 0..cols {
            let rx = x as f64 - cx;
            let sx = nearest(cos * rx + row_x);
            let sy = nearest(sin * rx + row_y);
            let sx = if flip { cols_i - 1 - sx } else { sx };
            let (sy, sx) = (sy + dy, sx + dx);
            let inside = (0..rows_i).contains(&sy) && (0..cols_i).contains(&sx);
            let at = y * cols + x;
            let from = (sy * cols_i + sx) as usize;
            for c in 0..channels {
                out[c * plane + at] = if inside { src[c * plane + from] } else { 0 };
            }
        }
    }
}

/// The nearest integer, halves rounded up. A truncating conversion after a shift that
/// keeps the value positive: `f64::round` is a library call on CPUs without SSE4.1, and
/// this runs once per pixel.
fn nearest(v: f64) -> i64 {
    const SHIFT: f64 = 1024.0;
    (v + 0.5 + SHIFT) as i64 - SHIFT as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn shifts_flips_and_rotates_within_the_bounds() {
        let shape = [1, 32, 32];
        let src: Vec<u8> = (0..32 * 32).map(|i| (i % 251) as u8 + 1).collect();
        let mut out = vec![0; src.len()];
        let mut zeros = Vec::new();
        let mut changed = 0;
        for seed in 0..200 {
            augment(&src, &mut out, shape, &mut ChaCha8Rng::seed_from_u64(seed));
            changed += usize::from(out != src);
            zeros.push(out.iter().filter(|&&p| p == 0).count());
            // Every pixel comes from the image or the zero fill.
            assert!(out.iter().all(|p| *p == 0 || src.contains(p)));
        }
        assert!(changed > 190, "{changed}");
        // A 4 px shift and a 15 degree turn leave at most this much of the frame empty.
        let most = zeros.iter().max().unwrap();
        assert!(*most > 0 && *most < 32 * 32 / 2, "{most}");
        let mut again = vec![0; src.len()];
        augment(&src, &mut out, shape, &mut ChaCha8Rng::seed_from_u64(7));
        augment(&src, &mut again, shape, &mut ChaCha8Rng::seed_from_u64(7));
        assert_eq!(out, again);
    }
}
