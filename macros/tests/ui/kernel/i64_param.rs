#[attnforge::mask]
fn before(q: i64, kv: i64, limit: i64) -> bool { kv <= q && q - kv < limit }

attnforge::kernel! {
    pub K { mask: before, dtype: f32, head_dim: 64 }
}
fn main() {}
