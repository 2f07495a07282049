//! A score function with a scalar parameter and f32 math.
#[attnforge_macros::score]
fn softcap(score: f32, _q: u32, _kv: u32, cap: f32) -> f32 {
    cap * (score / cap).tanh()
}

pub fn main() {
    let s = softcap(100.0, 0, 0, 30.0);
    assert!(s < 30.0 && s > 29.0);
    assert_eq!(softcap(0.0, 1, 0, 30.0), 0.0);
    assert_eq!(softcap::KIND, "score");
    assert_eq!(softcap::PARAMS, &[("cap", "f32")]);
    assert!(softcap::CUDA.contains(
        "float softcap(float score, int b, int h, long long q_pos, long long kv_pos, float cap)"
    ));
    assert!(softcap::CUDA.contains("return (cap * tanhf((score / cap)));"));
    let p = softcap::Params::new(30.0);
    assert_eq!(softcap::eval(100.0, 0, 0, 0, 0, &p), s);
}
