//! How compact the segments of dilated attention are on a 2-D grid of tokens, in raster order
//! and in Hilbert order: for each segment length, the mean over segments of the bounding box's
//! larger side (its "diameter", in grid cells) and the segment's radius of gyration (root mean
//! square distance of its tokens from their centroid, in cells). One JSON line per (grid, order,
//! segment length).
//!
//! ```text
//! cargo run --release -p dilated-attention-hilbert --example segment_locality -- 256 256
//! ```

use dilated_attention_hilbert::HilbertOrder;

fn stats(tokens: &[usize], width: usize) -> (f64, f64) {
    let xs: Vec<usize> = tokens.iter().map(|t| t % width).collect();
    let ys: Vec<usize> = tokens.iter().map(|t| t / width).collect();
    let span = |v: &[usize]| v.iter().max().unwrap() - v.iter().min().unwrap() + 1;
    let diameter = span(&xs).max(span(&ys)) as f64;
    let k = tokens.len() as f64;
    let cx = xs.iter().sum::<usize>() as f64 / k;
    let cy = ys.iter().sum::<usize>() as f64 / k;
    let squares: f64 = xs
        .iter()
        .zip(&ys)
        .map(|(&x, &y)| (x as f64 - cx).powi(2) + (y as f64 - cy).powi(2))
        .sum();
    (diameter, (squares / k).sqrt())
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (width, height) = (
        args.first().copied().unwrap_or(256),
        args.get(1).copied().unwrap_or(256),
    );
    let n = width * height;
    let hilbert = HilbertOrder::grid(width, height).expect("a non-empty grid");
    let raster: Vec<usize> = (0..n).collect();
    for segment in [64usize, 256, 1024, 4096] {
        for (name, order) in [("raster", raster.as_slice()), ("hilbert", hilbert.order())] {
            let chunks: Vec<(f64, f64)> = order.chunks(segment).map(|c| stats(c, width)).collect();
            let k = chunks.len() as f64;
            let diameter = chunks.iter().map(|c| c.0).sum::<f64>() / k;
            let gyration = chunks.iter().map(|c| c.1).sum::<f64>() / k;
            println!(
                "{{\"grid\":[{width},{height}],\"order\":\"{name}\",\"segment\":{segment},\"mean_diameter\":{diameter:.2},\"mean_radius_of_gyration\":{gyration:.2}}}"
            );
        }
    }
}
