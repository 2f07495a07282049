//! Companions follow the function's visibility and work inside modules.
mod variants {
    pub mod inner {
        /// Sliding window with batch and head indices (all four index parameters).
        #[attnforge_macros::mask]
        pub fn local(_b: u32, _head: u32, q: i64, kv: i64, left: i64, right: i64) -> bool {
            q - left <= kv && kv <= q + right
        }

        #[attnforge_macros::mask]
        pub(crate) fn head_even(h: u32, q: u32, kv: u32) -> bool {
            h % 2 == 0 || kv <= q
        }

        #[attnforge_macros::score]
        fn private_bias(score: f32, q: i32, kv: i32) -> f32 {
            score - (q - kv).abs() as f32
        }

        pub fn use_private() -> (f32, &'static str) {
            (private_bias(1.0, 3, 1), private_bias::CUDA)
        }
    }

    pub(super) fn from_parent() -> &'static str {
        inner::head_even::CUDA
    }
}

pub fn main() {
    use variants::inner;
    assert!(inner::local(0, 0, 10, 8, 2, 0));
    assert!(!inner::local(0, 0, 10, 7, 2, 0));
    assert!(inner::local::HAS_BATCH && inner::local::HAS_HEAD);
    assert_eq!(inner::local::PARAMS, &[("left", "i64"), ("right", "i64")]);
    assert!(inner::local::CUDA.contains("long long left, long long right)"));
    let p = inner::local::Params::new(2, 0);
    assert!(inner::local::eval(0, 0, 10, 8, &p));

    assert!(!inner::head_even::HAS_BATCH && inner::head_even::HAS_HEAD);
    assert!(inner::head_even(2, 0, 5));
    assert!(!inner::head_even(1, 0, 5));
    let p = inner::head_even::Params::new();
    assert!(!inner::head_even::eval(0, 1, 0, 5, &p));
    assert!(variants::from_parent().contains("const unsigned h_1 = ((unsigned)h);"));

    let (v, cuda) = inner::use_private();
    assert_eq!(v, -1.0);
    assert!(cuda.contains("af_dsl_abs("));
}
