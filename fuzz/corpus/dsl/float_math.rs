fn soft(score: f32, q: i32, kv: i32, cap: f32, t: &[f32]) -> f32 {
    let d = (q - kv) as f32;
    let x = cap * (score / cap).tanh() - d.abs().sqrt().min(f32::MAX) + t[(q as usize) % 4];
    if x == x { x } else { f32::NEG_INFINITY.max(x.powf(2.0).ln()) }
}
