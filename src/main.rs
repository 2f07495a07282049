//! The `attnforge` command line: list the catalog, emit CUDA + launch metadata, check kernels
//! against the reference, run a spec on `.npy` inputs. See `docs/cli.md`.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
