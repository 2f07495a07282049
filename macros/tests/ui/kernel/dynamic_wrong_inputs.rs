use attnforge::kernels::exec_dynamic::DynInputs;
use attnforge::reference::{Shape4, Tensor4};

attnforge::kernel! {
    pub Lm { family: landmark(mem_freq: 63, mode: train), dtype: bf16, head_dim: 64 }
}

fn main() {
    let t = || Tensor4::<f32>::from_fn(Shape4::new(1, 1, 4, 64), |_, _, _, _| 0.0);
    let x: DynInputs<f32> = DynInputs::new(t(), t(), t());
    // bf16 kernel, f32 tensors: a type error.
    let _ = Lm::reference(&x);
    // Dynamic kernels have no tile config.
    let _ = Lm::default_tile();
}
