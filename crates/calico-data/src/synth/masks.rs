//! From a label buffer to annotation masks: COCO RLEs of many keys in one
//! pass, and exact polygon outlines for the polygon-based format.

use calico_masks::{polygon_to_rle, Rle};

/// No key: the pixel belongs to no mask.
pub(crate) const NONE: u32 = u32::MAX;

/// Column-major copy of a row-major `width × height` buffer (tiled, so
/// both sides stay in cache).
pub(crate) fn transpose<T: Copy + Default>(src: &[T], width: u32, height: u32) -> Vec<T> {
    const TILE: usize = 32;
    let (w, h) = (width as usize, height as usize);
    let mut out = vec![T::default(); w * h];
    for y0 in (0..h).step_by(TILE) {
        for x0 in (0..w).step_by(TILE) {
            for y in y0..(y0 + TILE).min(h) {
                let row = &src[y * w..(y + 1) * w];
                for x in x0..(x0 + TILE).min(w) {
                    out[x * h + y] = row[x];
                }
            }
        }
    }
    out
}

/// The COCO RLE of every key `0..n_keys`, where pixel `i` (column-major) has
/// key `key(col[i])` (`NONE`: no key), in one pass. Identical to
/// `Rle::encode` of each key's binary mask.
pub(crate) fn rles_by_key<T: Copy + PartialEq>(
    col: &[T],
    key: impl Fn(T) -> u32,
    width: u32,
    height: u32,
    n_keys: usize,
) -> Vec<Rle> {
    let total = col.len();
    let mut counts: Vec<Vec<u32>> = vec![Vec::new(); n_keys];
    let mut last_end = vec![0usize; n_keys];
    let mut i = 0;
    while i < total {
        let label = col[i];
        let k = key(label);
        let mut j = i + 1;
        while j < total && (col[j] == label || key(col[j]) == k) {
            j += 1;
        }
        if k != NONE {
            let k = k as usize;
            counts[k].push((i - last_end[k]) as u32);
            counts[k].push((j - i) as u32);
            last_end[k] = j;
        }
        i = j;
    }
    counts
        .into_iter()
        .zip(last_end)
        .map(|(mut c, end)| {
            if c.is_empty() || end < total {
                c.push((total - end) as u32);
            }
            Rle::new(height, width, c)
        })
        .collect()
}

/// Labels the 4-connected components of equal keys (row-major); returns the
/// component map (`NONE` where the key is `NONE`) and each component's key,
/// first pixel and area.
fn components(keys: &[u32], width: usize, height: usize) -> (Vec<u32>, Vec<(u32, usize, u64)>) {
    let mut comp = vec![NONE; keys.len()];
    let mut info = Vec::new();
    let mut stack = Vec::new();
    for start in 0..keys.len() {
        if keys[start] == NONE || comp[start] != NONE {
            continue;
        }
        let id = info.len() as u32;
        let key = keys[start];
        let mut area = 0u64;
        comp[start] = id;
        stack.push(start);
        while let Some(p) = stack.pop() {
            area += 1;
            let (x, y) = (p % width, p / width);
            let mut visit = |q: usize| {
                if keys[q] == key && comp[q] == NONE {
                    comp[q] = id;
                    stack.push(q);
                }
            };
            if x > 0 {
                visit(p - 1);
            }
            if x + 1 < width {
                visit(p + 1);
            }
            if y > 0 {
                visit(p - width);
            }
            if y + 1 < height {
                visit(p + width);
            }
        }
        info.push((key, start, area));
    }
    (comp, info)
}

/// The outer boundary of component `id` along pixel edges, starting at the
/// top-left corner of its first (row-major) pixel, region on the right.
fn outline(comp: &[u32], width: usize, height: usize, id: u32, first: usize) -> Vec<f64> {
    let inside = |x: i64, y: i64| {
        x >= 0
            && y >= 0
            && (x as usize) < width
            && (y as usize) < height
            && comp[y as usize * width + x as usize] == id
    };
    const STEP: [(i64, i64); 4] = [(1, 0), (0, 1), (-1, 0), (0, -1)]; // E S W N
    let (sx, sy) = ((first % width) as i64, (first / width) as i64);
    let (mut vx, mut vy) = (sx, sy);
    let mut d = 3usize; // as if arrived heading north
    let mut out = Vec::new();
    let limit = 4 * (width + 1) * (height + 1);
    for _ in 0..limit {
        // Pixels ahead-right and ahead-left of the vertex for heading d.
        let (ar, al) = match d {
            0 => ((vx, vy), (vx, vy - 1)),
            1 => ((vx - 1, vy), (vx, vy)),
            2 => ((vx - 1, vy - 1), (vx - 1, vy)),
            _ => ((vx, vy - 1), (vx - 1, vy - 1)),
        };
        let nd = if !inside(ar.0, ar.1) {
            (d + 1) % 4
        } else if inside(al.0, al.1) {
            (d + 3) % 4
        } else {
            d
        };
        if nd != d {
            out.push(vx as f64);
            out.push(vy as f64);
        }
        // One turn always suffices: the pixel on the right of the new
        // edge is the one just walked along, or the one that caused a left turn.
        d = nd;
        vx += STEP[d].0;
        vy += STEP[d].1;
        if vx == sx && vy == sy {
            break;
        }
    }
    out
}

/// Rectangles (as 4-point polygons) that tile a component exactly: column
/// runs merged across neighbouring columns with the same extent.
fn rectangles(comp: &[u32], width: usize, height: usize, id: u32) -> Vec<Vec<f64>> {
    let mut open: Vec<(usize, usize, usize, usize)> = Vec::new(); // y0, y1, x0, x1 (exclusive)
    let mut done = Vec::new();
    for x in 0..width {
        let mut runs = Vec::new();
        let mut y = 0;
        while y < height {
            if comp[y * width + x] == id {
                let y0 = y;
                while y < height && comp[y * width + x] == id {
                    y += 1;
                }
                runs.push((y0, y));
            } else {
                y += 1;
            }
        }
        let mut next = Vec::new();
        for (y0, y1) in runs {
            if let Some(k) = open.iter().position(|r| r.0 == y0 && r.1 == y1 && r.3 == x) {
                let mut r = open.swap_remove(k);
                r.3 = x + 1;
                next.push(r);
            } else {
                next.push((y0, y1, x, x + 1));
            }
        }
        done.append(&mut open);
        open = next;
    }
    done.append(&mut open);
    done.sort_unstable_by_key(|r| (r.2, r.0));
    done.into_iter()
        .map(|(y0, y1, x0, x1)| {
            let (x0, x1, y0, y1) = (x0 as f64, x1 as f64, y0 as f64, y1 as f64);
            vec![x0, y0, x1, y0, x1, y1, x0, y1]
        })
        .collect()
}

/// COCO polygons for every key `0..n_keys` of a row-major key buffer, such
/// that rasterising them (pycocotools' rule) gives back exactly the key's
/// pixels. Each connected piece becomes its outline when the outline is
/// exact (no holes), else a set of rectangles.
pub(crate) fn polygons_by_key(
    keys: &[u32],
    width: u32,
    height: u32,
    n_keys: usize,
) -> Vec<Vec<Vec<f64>>> {
    let (w, h) = (width as usize, height as usize);
    let (comp, info) = components(keys, w, h);
    // Pixel-edge outlines rasterise to the component plus its holes, so
    // equal areas mean the outline is exact. Debug builds check every pixel.
    // (The check is skipped in release builds: it costs a transpose and an
    // RLE pass per image.)
    let comp_rles = cfg!(debug_assertions).then(|| {
        rles_by_key(
            &transpose(&comp, width, height),
            |c| c,
            width,
            height,
            info.len(),
        )
    });
    let mut out = vec![Vec::new(); n_keys];
    for (id, &(key, first, area)) in info.iter().enumerate() {
        let poly = outline(&comp, w, h, id as u32, first);
        let raster = (poly.len() >= 8)
            .then(|| polygon_to_rle(&poly, height, width).ok())
            .flatten();
        let exact = raster.as_ref().is_some_and(|r| r.area() == area);
        if let (true, Some(c), Some(r)) = (exact, &comp_rles, &raster) {
            assert_eq!(
                r, &c[id],
                "outline of component {id} has the right area but not the right pixels"
            );
        }
        if exact {
            out[key as usize].push(poly);
        } else {
            out[key as usize].extend(rectangles(&comp, w, h, id as u32));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use calico_masks::{polygons_to_rle, Mask};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_keys(rng: &mut ChaCha8Rng, w: usize, h: usize, n: u32) -> Vec<u32> {
        // Blobby regions: a few random discs per key over a NONE background.
        let mut keys = vec![NONE; w * h];
        for _ in 0..8 {
            let k = rng.random_range(0..n);
            let (cx, cy) = (rng.random_range(0..w) as i64, rng.random_range(0..h) as i64);
            let r = rng.random_range(1..8) as i64;
            for y in 0..h as i64 {
                for x in 0..w as i64 {
                    if (x - cx).pow(2) + (y - cy).pow(2) <= r * r {
                        keys[y as usize * w + x as usize] = k;
                    }
                }
            }
        }
        // Sprinkle single pixels and holes.
        for _ in 0..10 {
            let p = rng.random_range(0..w * h);
            keys[p] = if rng.random_bool(0.5) {
                NONE
            } else {
                rng.random_range(0..n)
            };
        }
        keys
    }

    fn key_mask(keys: &[u32], w: usize, h: usize, k: u32) -> Mask {
        Mask::from_fn(h as u32, w as u32, |y, x| {
            keys[y as usize * w + x as usize] == k
        })
    }

    #[test]
    fn rles_by_key_match_encode() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            let (w, h) = (rng.random_range(1..30), rng.random_range(1..30));
            let keys = random_keys(&mut rng, w, h, 4);
            let col = transpose(&keys, w as u32, h as u32);
            let rles = rles_by_key(&col, |k| k, w as u32, h as u32, 5);
            for k in 0..5u32 {
                assert_eq!(
                    rles[k as usize],
                    Rle::encode(&key_mask(&keys, w, h, k)),
                    "key {k}"
                );
            }
        }
    }

    #[test]
    fn polygons_rasterise_back_to_the_exact_pixels() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut outlines = 0;
        for _ in 0..60 {
            let (w, h) = (rng.random_range(1..40), rng.random_range(1..40));
            let keys = random_keys(&mut rng, w, h, 3);
            let polys = polygons_by_key(&keys, w as u32, h as u32, 3);
            for k in 0..3u32 {
                let want = Rle::encode(&key_mask(&keys, w, h, k));
                let got = polygons_to_rle(&polys[k as usize], h as u32, w as u32).unwrap();
                assert_eq!(
                    got.decode().unwrap(),
                    want.decode().unwrap(),
                    "key {k} {w}×{h}"
                );
                outlines += polys[k as usize].iter().filter(|p| p.len() > 8).count();
            }
        }
        assert!(
            outlines > 50,
            "outlines are used, not just rectangles ({outlines})"
        );
    }

    #[test]
    fn a_square_outline_is_four_corners() {
        let (w, h) = (6, 5);
        let mut keys = vec![NONE; w * h];
        for y in 1..4 {
            for x in 2..5 {
                keys[y * w + x] = 0;
            }
        }
        let polys = polygons_by_key(&keys, w as u32, h as u32, 1);
        assert_eq!(polys[0], vec![vec![2.0, 1.0, 5.0, 1.0, 5.0, 4.0, 2.0, 4.0]]);
    }
}
