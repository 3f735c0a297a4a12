//! How compact the segments of dilated attention are on a 2-D grid or a 3-D volume of tokens, in
//! raster order and in Hilbert order: for each segment length, the mean over segments of the
//! bounding box's largest side (its "diameter", in cells) and the segment's radius of gyration
//! (root mean square distance of its tokens from their centroid, in cells). One JSON line per
//! (shape, order, segment length). Two sides give a grid, three a volume.
//!
//! ```text
//! cargo run --release -p dilated-attention-hilbert --example segment_locality -- 256 256
//! cargo run --release -p dilated-attention-hilbert --example segment_locality -- 32 32 32
//! ```

use dilated_attention_hilbert::HilbertOrder;

/// (diameter, radius of gyration) of a segment given its tokens' coordinates.
fn stats(coords: &[[usize; 3]]) -> (f64, f64) {
    let k = coords.len() as f64;
    let mut diameter = 0usize;
    let mut squares = 0.0;
    for axis in 0..3 {
        let values = coords.iter().map(|c| c[axis]);
        let span = values.clone().max().unwrap() - values.clone().min().unwrap() + 1;
        diameter = diameter.max(span);
        let mean = values.clone().sum::<usize>() as f64 / k;
        squares += values.map(|v| (v as f64 - mean).powi(2)).sum::<f64>();
    }
    (diameter as f64, (squares / k).sqrt())
}

fn main() {
    let sides: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (width, height, depth) = match sides.as_slice() {
        [w, h, d, ..] => (*w, *h, *d),
        [w, h] => (*w, *h, 1),
        _ => (256, 256, 1),
    };
    let n = width * height * depth;
    let hilbert = if depth == 1 {
        HilbertOrder::grid(width, height)
    } else {
        HilbertOrder::volume(width, height, depth)
    }
    .expect("a non-empty shape");
    let coord = |t: usize| [t % width, (t / width) % height, t / (width * height)];
    let raster: Vec<usize> = (0..n).collect();
    let shape = if depth == 1 {
        format!("[{width},{height}]")
    } else {
        format!("[{width},{height},{depth}]")
    };
    for segment in [64usize, 256, 1024, 4096] {
        for (name, order) in [("raster", raster.as_slice()), ("hilbert", hilbert.order())] {
            let chunks: Vec<(f64, f64)> = order
                .chunks(segment)
                .map(|c| stats(&c.iter().map(|&t| coord(t)).collect::<Vec<_>>()))
                .collect();
            let k = chunks.len() as f64;
            let diameter = chunks.iter().map(|c| c.0).sum::<f64>() / k;
            let gyration = chunks.iter().map(|c| c.1).sum::<f64>() / k;
            println!(
                "{{\"shape\":{shape},\"order\":\"{name}\",\"segment\":{segment},\"mean_diameter\":{diameter:.2},\"mean_radius_of_gyration\":{gyration:.2}}}"
            );
        }
    }
}
