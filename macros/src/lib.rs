//! Proc-macros of attnforge (the DSL issue fills this crate in).
