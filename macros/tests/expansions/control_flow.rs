//! `let`, `if`/`else` expressions, early `return`, casts and min/max.
#[attnforge_macros::mask]
fn lambda_mask(q: u32, kv: u32, g: u32, l: u32) -> bool {
    if kv > q {
        return false;
    }
    let dist = q - kv;
    let near = if dist < l { true } else { kv < g };
    near && u32::min(dist, 5) <= 5
}

#[attnforge_macros::score]
fn bucketed(score: f32, q: u32, kv: u32, scale: f32) -> f32 {
    let d = (q as i64 - kv as i64).abs();
    let bucket = if d < 8 {
        d
    } else {
        let lg = (d as f32).ln() as i64;
        8 + lg.min(7)
    };
    score - scale * bucket as f32
}

pub fn main() {
    assert!(lambda_mask(10, 0, 2, 3));
    assert!(!lambda_mask(10, 5, 2, 3));
    assert!(lambda_mask(10, 8, 2, 3));
    assert!(!lambda_mask(3, 4, 2, 3));
    assert!(lambda_mask::CUDA.contains("return false;"));
    assert_eq!(bucketed(1.0, 5, 5, 0.5), 1.0);
    assert!(bucketed::CUDA.contains("af_dsl_f2i64(logf("));
}
