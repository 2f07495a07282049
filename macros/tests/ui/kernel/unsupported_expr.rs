const W: i64 = 8;
attnforge::kernel! {
    pub K { mask: local(W, 0), score: softcap(2.0 * 15.0), dtype: f32, head_dim: 64 }
}
fn main() {}
