fn casts(score: f32, q: u32, kv: u32, s: i32, u: u64) -> f32 {
    let a = (score as i64) as u32 as usize as isize as f32;
    let b = (-1.5f32 as u32) as f32 + (f32::INFINITY as i32) as f32 + (s as u64 % (u | 1)) as f32;
    a + b * 0.0 + (q.min(kv) as f32) - (i64::MAX as f32)
}
