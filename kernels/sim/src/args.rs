//! Launch arguments: host buffers (staged in 256-byte aligned memory, like
//! `cudaMalloc`) and scalars, checked against the kernel's parameter types.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ffi::c_void;
use std::marker::PhantomData;

use half::{bf16, f16};

mod sealed {
    pub trait Sealed {}
}

/// Element types that can back a device-pointer argument.
pub trait SimElem: Copy + sealed::Sealed + 'static {
    /// The element's kind, matched against the kernel's pointer type.
    const ELEM: Elem;
}

/// Element kinds of buffers, and of the kernel's pointer parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// `float`
    F32,
    /// `double`
    F64,
    /// `__half`
    F16,
    /// `__nv_bfloat16`
    Bf16,
    /// raw 16-bit values (`u16`): matches `__half`, `__nv_bfloat16` and `unsigned short`
    Raw16,
    /// `int`
    I32,
    /// `long long`
    I64,
    /// `unsigned`
    U32,
    /// raw bytes (`u8`): matches `char`, `unsigned char` and any other pointee
    Bytes,
}

impl Elem {
    /// The Rust type to use for this element, for error messages.
    pub fn rust_name(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::F64 => "f64",
            Elem::F16 => "half::f16",
            Elem::Bf16 => "half::bf16",
            Elem::Raw16 => "u16",
            Elem::I32 => "i32",
            Elem::I64 => "i64",
            Elem::U32 => "u32",
            Elem::Bytes => "u8",
        }
    }
    /// Does a buffer of `self` fit a kernel pointer whose pointee code is `code`?
    fn fits(self, code: char) -> bool {
        matches!(
            (self, code),
            (Elem::F32, 'f')
                | (Elem::F64, 'd')
                | (Elem::F16, 'h')
                | (Elem::Bf16, 'b')
                | (Elem::Raw16, 'h' | 'b' | 's')
                | (Elem::I32, 'i')
                | (Elem::I64, 'l')
                | (Elem::U32, 'u')
                | (Elem::Bytes, _)
        )
    }
}

macro_rules! elem {
    ($($t:ty => $e:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl SimElem for $t { const ELEM: Elem = Elem::$e; }
    )*};
}
elem!(f32 => F32, f64 => F64, f16 => F16, bf16 => Bf16, u16 => Raw16, i32 => I32, i64 => I64, u32 => U32, u8 => Bytes);

/// A 256-byte aligned staging copy of a host buffer.
#[derive(Debug)]
pub(crate) struct Staged {
    ptr: *mut u8,
    layout: Layout,
}

impl Staged {
    fn new(bytes: &[u8]) -> Staged {
        let layout =
            Layout::from_size_align(bytes.len().max(1), 256).expect("buffer size overflows Layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: ptr is valid for layout.size() >= bytes.len() bytes and does not overlap bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len()) };
        Staged { ptr, layout }
    }
    pub(crate) fn ptr(&self) -> *mut c_void {
        self.ptr.cast()
    }
    fn copy_back(&self, dst: &mut [u8]) {
        // SAFETY: the staging buffer holds at least dst.len() bytes (it was made from it).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr, dst.as_mut_ptr(), dst.len()) };
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

/// A buffer argument: an input (copied in) or an output (copied in and back).
#[derive(Debug)]
pub struct BufferArg<'a> {
    pub(crate) elem: Elem,
    pub(crate) len: usize,
    pub(crate) bytes_in: *const u8,
    pub(crate) bytes_out: Option<*mut u8>,
    pub(crate) byte_len: usize,
    _life: PhantomData<&'a mut [u8]>,
}

impl BufferArg<'_> {
    pub(crate) fn stage(&self) -> Staged {
        // SAFETY: bytes_in/byte_len come from a live slice borrowed for 'a.
        Staged::new(unsafe { std::slice::from_raw_parts(self.bytes_in, self.byte_len) })
    }
    pub(crate) fn unstage(&mut self, s: &Staged) {
        if let Some(out) = self.bytes_out {
            // SAFETY: out/byte_len come from a live `&'a mut` slice held exclusively by this arg.
            s.copy_back(unsafe { std::slice::from_raw_parts_mut(out, self.byte_len) });
        }
    }
}

/// One kernel argument, in the order of the kernel's parameter list.
///
/// Buffers are staged in 256-byte aligned host memory (as `cudaMalloc` would align them)
/// and the staging pointer is passed as the device pointer; outputs are copied back
/// after the launch (also after a failed one).
///
/// ```
/// use attnforge_sim::SimArg;
/// let q = vec![1.0f32; 16];
/// let mut o = vec![0.0f32; 16];
/// let args = [SimArg::input(&q), SimArg::output(&mut o), SimArg::I32(16)];
/// assert_eq!(args.len(), 3);
/// ```
#[derive(Debug)]
pub enum SimArg<'a> {
    /// A device pointer backed by a host buffer.
    Buffer(BufferArg<'a>),
    /// A null device pointer.
    Null,
    /// `int`
    I32(i32),
    /// `long long`
    I64(i64),
    /// `unsigned`
    U32(u32),
    /// `float`
    F32(f32),
}

impl<'a> SimArg<'a> {
    /// A read-only buffer (`const T*` in the kernel); the kernel sees a private copy.
    pub fn input<T: SimElem>(data: &'a [T]) -> SimArg<'a> {
        SimArg::Buffer(BufferArg {
            elem: T::ELEM,
            len: data.len(),
            bytes_in: data.as_ptr().cast(),
            bytes_out: None,
            byte_len: std::mem::size_of_val(data),
            _life: PhantomData,
        })
    }
    /// A read-write buffer (`T*`): copied in, and back after the launch.
    pub fn output<T: SimElem>(data: &'a mut [T]) -> SimArg<'a> {
        let ptr: *mut u8 = data.as_mut_ptr().cast();
        SimArg::Buffer(BufferArg {
            elem: T::ELEM,
            len: data.len(),
            bytes_in: ptr,
            bytes_out: Some(ptr),
            byte_len: std::mem::size_of_val(data),
            _life: PhantomData,
        })
    }
    /// Same as [`SimArg::output`].
    pub fn buffer<T: SimElem>(data: &'a mut [T]) -> SimArg<'a> {
        SimArg::output(data)
    }
    /// What this argument is, in words (for error messages).
    pub fn describe(&self) -> String {
        match self {
            SimArg::Buffer(b) => format!(
                "a {} buffer of {} elements ({})",
                b.elem.rust_name(),
                b.len,
                if b.bytes_out.is_some() {
                    "output"
                } else {
                    "input"
                }
            ),
            SimArg::Null => "a null pointer".into(),
            SimArg::I32(_) => "SimArg::I32".into(),
            SimArg::I64(_) => "SimArg::I64".into(),
            SimArg::U32(_) => "SimArg::U32".into(),
            SimArg::F32(_) => "SimArg::F32".into(),
        }
    }
}

/// The C++ spelling of a parameter code from the shim's signature string.
pub(crate) fn cpp_type(code: &str) -> String {
    let elem = |c: char| match c {
        'f' => "float",
        'd' => "double",
        'h' => "__half",
        'b' => "__nv_bfloat16",
        's' => "unsigned short",
        'i' => "int",
        'l' => "long long",
        'u' => "unsigned",
        'c' => "char",
        _ => "<other>",
    };
    let mut it = code.chars();
    match it.next() {
        Some('P') => {
            let rest: Vec<char> = it.collect();
            let (cst, c) = match rest.as_slice() {
                ['c', c] => ("const ", *c),
                [c] => ("", *c),
                _ => ("", '?'),
            };
            format!("{cst}{}*", elem(c))
        }
        Some(c) => elem(c).to_string(),
        None => "<none>".into(),
    }
}

/// What to pass for a parameter code, for error messages.
fn suggestion(code: &str) -> String {
    let c = code.chars().last().unwrap_or('?');
    let t = match c {
        'f' => "f32",
        'd' => "f64",
        'h' => "half::f16",
        'b' => "half::bf16",
        's' => "u16",
        'i' => "i32",
        'l' => "i64",
        'u' => "u32",
        _ => "u8",
    };
    if code.starts_with('P') {
        if code.starts_with("Pc") {
            format!("SimArg::input(&[{t}])")
        } else {
            format!("SimArg::output(&mut [{t}])")
        }
    } else {
        match c {
            'i' => "SimArg::I32(..)".into(),
            'l' => "SimArg::I64(..)".into(),
            'u' => "SimArg::U32(..)".into(),
            'f' => "SimArg::F32(..)".into(),
            _ => "nothing: this scalar type is not supported by SimArg".into(),
        }
    }
}

/// Checks `args` against the shim's parameter codes; the message names the argument and the fix.
pub(crate) fn check(codes: &[&str], args: &[SimArg<'_>]) -> Result<(), String> {
    if codes.len() != args.len() {
        let sig: Vec<String> = codes.iter().map(|c| cpp_type(c)).collect();
        return Err(format!(
            "takes {} arguments ({}), got {}",
            codes.len(),
            sig.join(", "),
            args.len()
        ));
    }
    for (i, (code, arg)) in codes.iter().zip(args).enumerate() {
        let ok = match arg {
            SimArg::Buffer(b) => {
                code.starts_with('P') && code.chars().last().is_some_and(|c| b.elem.fits(c))
            }
            SimArg::Null => code.starts_with('P'),
            SimArg::I32(_) => *code == "i",
            SimArg::I64(_) => *code == "l",
            SimArg::U32(_) => *code == "u",
            SimArg::F32(_) => *code == "f",
        };
        if !ok {
            return Err(format!(
                "argument {i} is `{}` in the kernel but {} was passed; pass {}",
                cpp_type(code),
                arg.describe(),
                suggestion(code)
            ));
        }
    }
    Ok(())
}
