//! Prints the CUDA translation of a mask or score function read from stdin.
//!
//! `echo 'fn m(q: u32, kv: u32) -> bool { kv <= q }' | cargo run -p attnforge-dsl --example show`
use std::io::Read;

fn main() {
    let mut src = String::new();
    std::io::stdin()
        .read_to_string(&mut src)
        .expect("read stdin");
    let kind = std::env::args().nth(1).unwrap_or_else(|| "mask".into());
    let r = if kind == "score" {
        attnforge_dsl::parse_score_fn(&src)
    } else {
        attnforge_dsl::parse_mask_fn(&src)
    };
    match r {
        Ok(def) => print!("{}", def.cuda),
        Err(errs) => {
            for e in errs {
                eprintln!("{e}");
            }
            std::process::exit(1);
        }
    }
}
