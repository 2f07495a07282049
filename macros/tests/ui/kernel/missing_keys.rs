attnforge::kernel! {
    pub K { mask: causal }
}
fn main() {}
