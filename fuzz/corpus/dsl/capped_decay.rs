fn capped_decay(score: f32, h: u32, q: i64, kv: i64, bias: &[f32], decay: f32) -> f32 {
    let dist = (q - kv).abs() as f32;
    score + bias[h as usize] - 4.0 * (decay * dist / 4.0).tanh()
}
