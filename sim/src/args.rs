//! Launch arguments: host buffers (staged between inaccessible guard regions, the end flush
//! against one) and scalars, checked against the kernel's parameter types.

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

/// Bytes of inaccessible address space on each side of a staged buffer: an index past the
/// end (or before the start) by up to this much faults, and the fault is reported against
/// the buffer. Reserved, never backed by memory.
const GUARD_BYTES: usize = 1 << 20;

/// The fill of the page slack next to a staged buffer (checked after the launch: writes
/// there are out of bounds but not faults; reads there see NaN bits).
const SLACK_POISON: u8 = 0xFF;

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}

/// A staging copy of a host buffer between two inaccessible guard regions, one end flush
/// against its guard (an access one byte beyond that end faults): the end by default, the
/// start under [`crate::Schedule::Reverse`], so that the standard schedules catch both.
/// With the end flush the start is aligned to the largest power of two dividing the byte
/// length (up to the page size): at least the element size, the 16 bytes `cp.async` needs
/// for lengths that are multiples of 16, `cudaMalloc`'s 256 for multiples of 256. The
/// page slack at the other end holds [`SLACK_POISON`] bytes, checked after the launch.
#[derive(Debug)]
pub(crate) struct Staged {
    map: *mut u8,
    map_len: usize,
    ptr: *mut u8,
    len: usize,
    /// Bytes of poisoned, accessible page slack next to the buffer.
    slack: usize,
    /// The slack lies before the start (end flush) or after the end (start flush).
    slack_before: bool,
}

impl Staged {
    fn new(bytes: &[u8], flush_start: bool) -> Staged {
        let page = page_size();
        let len = bytes.len();
        let body = len.div_ceil(page) * page;
        let map_len = GUARD_BYTES + body + GUARD_BYTES;
        // SAFETY: an anonymous private reservation; no existing memory is touched.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert!(
            map != libc::MAP_FAILED,
            "could not reserve {map_len} bytes of address space for a simulator buffer"
        );
        let map = map.cast::<u8>();
        if body > 0 {
            // SAFETY: [GUARD_BYTES, GUARD_BYTES + body) lies inside the reservation.
            let rc = unsafe {
                libc::mprotect(
                    map.add(GUARD_BYTES).cast(),
                    body,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            };
            assert!(rc == 0, "mprotect of a simulator buffer failed");
        }
        let slack = body - len;
        let start = if flush_start { 0 } else { slack };
        // SAFETY: GUARD_BYTES + start + len <= GUARD_BYTES + body, inside the reservation.
        let ptr = unsafe { map.add(GUARD_BYTES + start) };
        // SAFETY: the accessible pages are [map + GUARD_BYTES, + body); `bytes` is elsewhere.
        unsafe {
            std::ptr::write_bytes(map.add(GUARD_BYTES), SLACK_POISON, body);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, len);
        }
        Staged {
            map,
            map_len,
            ptr,
            len,
            slack,
            slack_before: !flush_start,
        }
    }
    pub(crate) fn ptr(&self) -> *mut c_void {
        self.ptr.cast()
    }
    fn copy_back(&self, dst: &mut [u8]) {
        // SAFETY: the staging buffer holds exactly dst.len() bytes (it was made from it).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr, dst.as_mut_ptr(), dst.len()) };
    }
    /// A write into the page slack (out of bounds, but not a fault): the byte offset,
    /// relative to the buffer's start, of the lowest written byte.
    pub(crate) fn slack_written(&self) -> Option<i64> {
        let (slack, len) = (self.slack as i64, self.len as i64);
        if self.slack_before {
            // SAFETY: the slack is the accessible range [ptr - slack, ptr).
            let s = unsafe { std::slice::from_raw_parts(self.ptr.sub(self.slack), self.slack) };
            s.iter()
                .position(|&b| b != SLACK_POISON)
                .map(|i| i as i64 - slack)
        } else {
            // SAFETY: the slack is the accessible range [ptr + len, ptr + len + slack).
            let s = unsafe { std::slice::from_raw_parts(self.ptr.add(self.len), self.slack) };
            s.iter()
                .position(|&b| b != SLACK_POISON)
                .map(|i| len + i as i64)
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // SAFETY: the reservation made in `new`.
        unsafe { libc::munmap(self.map.cast(), self.map_len) };
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
    pub(crate) fn stage(&self, flush_start: bool) -> Staged {
        // SAFETY: bytes_in/byte_len come from a live slice borrowed for 'a.
        Staged::new(
            unsafe { std::slice::from_raw_parts(self.bytes_in, self.byte_len) },
            flush_start,
        )
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
/// Buffers are staged in host memory between inaccessible guard regions, the end flush
/// against one, and the staging pointer is passed as the device pointer (aligned to the
/// largest power of two dividing the byte length, up to a page); outputs are copied back
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
