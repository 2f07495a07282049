//! `.npy` input and output for the CLI (through the `npyz` crate).
//!
//! Supported: little-endian `<f4` (f32), `<f2` (f16), `<u2` (raw bf16 bits; NumPy has no
//! bfloat16) and `<i4` (document ids), C order only. A bf16 spec reads `<u2` bits as they
//! are, or `<f4` rounded to nearest-even bf16. Outputs are written atomically (a temporary
//! file in the same folder, then a rename): a failed run leaves nothing behind.
//!
//! ```no_run
//! let ids = attnforge::npy::read_i32(std::path::Path::new("doc.npy")).unwrap();
//! # let _ = ids;
//! ```

use std::fmt;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use attnforge_reference::{Shape4, Tensor4};
use attnforge_runtime::codegen::spec::DType;
use half::{bf16, f16};
use npyz::WriterBuilder;

/// An `.npy` problem: the file, what is wrong, how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for NpyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}\n  fix: {}",
            self.file.display(),
            self.message,
            self.fix
        )
    }
}

impl std::error::Error for NpyError {}

fn err(file: &Path, message: impl Into<String>, fix: impl Into<String>) -> NpyError {
    NpyError {
        file: file.to_path_buf(),
        message: message.into(),
        fix: fix.into(),
    }
}

/// A 4-D input tensor in one of the kernel element types.
#[derive(Clone, Debug)]
pub enum AnyTensor {
    /// f32.
    F32(Tensor4<f32>),
    /// f16.
    F16(Tensor4<f16>),
    /// bf16.
    Bf16(Tensor4<bf16>),
}

impl AnyTensor {
    /// The shape.
    pub fn shape(&self) -> Shape4 {
        match self {
            AnyTensor::F32(t) => t.shape,
            AnyTensor::F16(t) => t.shape,
            AnyTensor::Bf16(t) => t.shape,
        }
    }
}

fn open(path: &Path) -> Result<npyz::NpyFile<BufReader<File>>, NpyError> {
    if path.is_dir() {
        return Err(err(
            path,
            "is a directory, not an .npy file",
            "pass the path of an .npy file inside it",
        ));
    }
    let mut f = File::open(path).map_err(|e| {
        err(
            path,
            format!("cannot open: {e}"),
            "check the path (relative paths are relative to the working directory)",
        )
    })?;
    check_header(path, &mut f)?;
    let npy = npyz::NpyFile::new(BufReader::new(f)).map_err(|e| {
        err(
            path,
            format!("not a valid .npy file: {e}"),
            "write it with numpy.save",
        )
    })?;
    let n = check_count(path, npy.shape())?;
    let item = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.num_bytes().unwrap_or(1) as u64,
        _ => 1,
    };
    let file_len = std::fs::metadata(path).map_or(u64::MAX, |m| m.len());
    if n.saturating_mul(item) > file_len {
        return Err(err(
            path,
            format!(
                "the header declares {:?} ({n} elements of {item} bytes) but the file holds only {file_len} bytes (truncated?)",
                npy.shape()
            ),
            "rewrite the file with numpy.save",
        ));
    }
    if npy.order() != npyz::Order::C {
        return Err(err(
            path,
            "array is in Fortran order",
            "save a C-contiguous array (numpy.ascontiguousarray(x))",
        ));
    }
    Ok(npy)
}

fn check_count(path: &Path, shape: &[u64]) -> Result<u64, NpyError> {
    let max = crate::limits::MAX_TENSOR_ELEMENTS;
    match crate::limits::checked_product(shape) {
        None => Err(err(
            path,
            format!("header shape {shape:?} has more than 2^64 elements (the header is damaged or not from numpy.save)"),
            "rewrite the file with numpy.save",
        )),
        Some(n) if n > max => Err(err(
            path,
            format!("header shape {shape:?} has {n} elements, more than {max} (the kernels index with 32-bit int)"),
            format!("pass at most {max} elements per tensor (docs/cli.md, size limits)"),
        )),
        Some(n) => Ok(n),
    }
}

/// The shape of an `.npy` file, read from its header only (sizes are checked before the data
/// is read).
pub fn read_shape(path: &Path) -> Result<Vec<u64>, NpyError> {
    Ok(open(path)?.shape().to_vec())
}

fn descr(npy: &npyz::NpyFile<BufReader<File>>) -> String {
    match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => format!("{other:?}"),
    }
}

fn read_vec<T: npyz::Deserialize>(
    path: &Path,
    npy: npyz::NpyFile<BufReader<File>>,
) -> Result<Vec<T>, NpyError> {
    npy.into_vec::<T>().map_err(|e| {
        err(
            path,
            format!("cannot read data: {e}"),
            "rewrite the file with numpy.save",
        )
    })
}

/// Read a `[B, H, S, D]` tensor for a kernel of element type `dtype`.
pub fn read_tensor(path: &Path, dtype: DType) -> Result<AnyTensor, NpyError> {
    read_rank(path, dtype, 4, "[batch, heads, seq, head_dim]")
}

/// Read a packed `[T, H, D]` tensor (a serving layout's q, k or v) for a kernel of element
/// type `dtype`, as a tensor of shape `[1, T, H, D]` (the same elements in the same order).
pub fn read_packed(path: &Path, dtype: DType) -> Result<AnyTensor, NpyError> {
    read_rank(path, dtype, 3, "[tokens, heads, head_dim]")
}

/// Read an array of `rank` dimensions (`what` names them) as a 4-D tensor, padded with
/// leading 1s.
fn read_rank(path: &Path, dtype: DType, rank: usize, what: &str) -> Result<AnyTensor, NpyError> {
    let npy = open(path)?;
    let shape: Vec<u64> = npy.shape().to_vec();
    if shape.len() != rank {
        return Err(err(
            path,
            format!("shape {shape:?} has {} dimensions", shape.len()),
            format!("pass a {rank}-D array {what}"),
        ));
    }
    let mut dims = vec![1usize; 4 - rank];
    dims.extend(shape.iter().map(|&x| x as usize));
    let s = Shape4::new(dims[0], dims[1], dims[2], dims[3]);
    let d = descr(&npy);
    let check_finite = |bad: Option<usize>| match bad {
        Some(i) => Err(err(
            path,
            format!("element {i} (flat, C order) is NaN or Inf"),
            "clean the input: attention of non-finite values is undefined",
        )),
        None => Ok(()),
    };
    let wrong = |want: &str| {
        err(
            path,
            format!("dtype {d} does not match the kernel's {}", dtype.short()),
            format!("save the array as {want}"),
        )
    };
    Ok(match (dtype, d.as_str()) {
        (DType::F32, "<f4") => {
            let v: Vec<f32> = read_vec(path, npy)?;
            check_finite(v.iter().position(|x| !x.is_finite()))?;
            AnyTensor::F32(tensor(path, s, v)?)
        }
        (DType::F16, "<f2") => {
            let v: Vec<f16> = read_vec(path, npy)?;
            check_finite(v.iter().position(|x| !x.is_finite()))?;
            AnyTensor::F16(tensor(path, s, v)?)
        }
        (DType::Bf16, "<u2") => {
            let v: Vec<u16> = read_vec(path, npy)?;
            let v: Vec<bf16> = v.into_iter().map(bf16::from_bits).collect();
            check_finite(v.iter().position(|x| !x.is_finite()))?;
            AnyTensor::Bf16(tensor(path, s, v)?)
        }
        (DType::Bf16, "<f4") => {
            let v: Vec<f32> = read_vec(path, npy)?;
            check_finite(v.iter().position(|x| !x.is_finite()))?;
            let b: Vec<bf16> = v.iter().copied().map(bf16::from_f32).collect();
            if let Some(i) = b.iter().position(|x| !x.is_finite()) {
                return Err(err(
                    path,
                    format!(
                        "element {i} (flat, C order) = {:e} is finite in f32 but out of the bf16 range (largest finite bf16 {:e})",
                        v[i],
                        f32::from(bf16::MAX)
                    ),
                    "scale the input into the bf16 range",
                ));
            }
            AnyTensor::Bf16(tensor(path, s, b)?)
        }
        (DType::F32, _) => return Err(wrong("float32 ('<f4')")),
        (DType::F16, _) => return Err(wrong("float16 ('<f2')")),
        (DType::Bf16, _) => {
            return Err(wrong(
                "uint16 raw bfloat16 bits ('<u2') or float32 ('<f4', rounded to bf16)",
            ))
        }
    })
}

fn tensor<T: attnforge_reference::Element>(
    path: &Path,
    s: Shape4,
    v: Vec<T>,
) -> Result<Tensor4<T>, NpyError> {
    Tensor4::from_vec(s, v)
        .map_err(|e| err(path, e.to_string(), "rewrite the file with numpy.save"))
}

/// Read a 1-D or 2-D int32 array (document ids), flattened in C order.
pub fn read_i32(path: &Path) -> Result<Vec<i32>, NpyError> {
    let npy = open(path)?;
    let d = descr(&npy);
    if d != "<i4" {
        return Err(err(
            path,
            format!("dtype {d}, expected int32"),
            "save the ids as numpy int32 ('<i4')",
        ));
    }
    if npy.shape().len() > 2 {
        return Err(err(
            path,
            format!("shape {:?}: ids must be [Sk] or [B, Sk]", npy.shape()),
            "pass a 1-D or 2-D array",
        ));
    }
    read_vec(path, npy)
}

/// An output written to a temporary file next to its destination and not yet renamed into
/// place; dropping it without [`Staged::commit`] removes the temporary file.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Staged {
    /// Rename the temporary file into place.
    pub fn commit(mut self) -> Result<(), NpyError> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| {
            err(
                &self.path,
                format!("cannot write: {e}"),
                "check that the folder exists and is writable",
            )
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write `data` with `shape` to a temporary file next to `path` (renamed into place by
/// [`Staged::commit`]), so that several outputs can be written before any is replaced.
pub fn write_staged<T: npyz::AutoSerialize + Clone>(
    path: &Path,
    shape: &[u64],
    data: &[T],
) -> Result<Staged, NpyError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out.npy".into());
    let staged = Staged {
        tmp: dir.join(format!(".{name}.tmp-{}", std::process::id())),
        path: path.to_path_buf(),
        committed: false,
    };
    let res = (|| -> std::io::Result<()> {
        let f = File::create(&staged.tmp)?;
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(BufWriter::new(f))
            .begin_nd()?;
        w.extend(data.iter().cloned())?;
        w.finish()?;
        Ok(())
    })();
    res.map_err(|e| {
        err(
            path,
            format!("cannot write: {e}"),
            "check that the folder exists and is writable",
        )
    })?;
    Ok(staged)
}

/// Write `data` with `shape` to `path` atomically (temp file + rename).
pub fn write_atomic<T: npyz::AutoSerialize + Clone>(
    path: &Path,
    shape: &[u64],
    data: &[T],
) -> Result<(), NpyError> {
    write_staged(path, shape, data)?.commit()
}

/// Write bytes atomically (temp file + rename), for `.cu` and `.json` outputs.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<(), NpyError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(
            path,
            format!("cannot write: {e}"),
            "check that the folder exists and is writable",
        ));
    }
    Ok(())
}

/// Longest `.npy` header accepted: NumPy writes a few hundred bytes, and `numpy.load`
/// refuses more than 10000 by default.
const MAX_HEADER_LEN: u64 = 65536;
/// Deepest bracket nesting accepted in a header (a structured dtype nests a few levels).
const MAX_HEADER_NESTING: usize = 16;

/// Checks what `npyz` would trust before it allocates or multiplies: the header length
/// (`npyz` allocates it before reading), the bracket nesting of the header (its parser
/// recurses) and the `shape` (its element count must fit in u64 and in the data the file
/// has). Anything else that is malformed is left to `npyz`'s own errors. Rewinds `f`.
fn check_header(path: &Path, f: &mut File) -> Result<(), NpyError> {
    let bad = |m: String| err(path, m, "rewrite the file with numpy.save");
    let io = |e: std::io::Error| err(path, format!("cannot read: {e}"), "check the file");
    let file_len = f.metadata().map_err(io)?.len();
    let mut head = Vec::with_capacity(12);
    Read::by_ref(f)
        .take(12)
        .read_to_end(&mut head)
        .map_err(io)?;
    let got = head.len();
    let mut pre = [0u8; 12];
    pre[..got].copy_from_slice(&head);
    let magic = got >= 10 && pre.starts_with(b"\x93NUMPY");
    let (start, header_len) = match pre[6] {
        1 if magic => (10u64, u64::from(u16::from_le_bytes([pre[8], pre[9]]))),
        2 | 3 if magic && got >= 12 => (
            12,
            u64::from(u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]])),
        ),
        _ => return f.rewind().map_err(io),
    };
    if header_len > MAX_HEADER_LEN || start + header_len > file_len {
        return Err(bad(format!(
            "the header claims {header_len} bytes but the file has {} after the preamble \
             (at most {MAX_HEADER_LEN} are accepted)",
            file_len.saturating_sub(start)
        )));
    }
    let mut text = vec![0u8; header_len as usize];
    f.seek(std::io::SeekFrom::Start(start)).map_err(io)?;
    f.read_exact(&mut text).map_err(io)?;
    let data_len = file_len - start - header_len;
    // Walk the dict literal outside string literals: nesting, and the `shape` tuple(s).
    let mut depth = 0usize;
    let mut i = 0;
    let mut last_string: Option<&[u8]> = None;
    while i < text.len() {
        match text[i] {
            q @ (b'\'' | b'"') => {
                let mut end = i + 1;
                while end < text.len() && text[end] != q {
                    end += if text[end] == b'\\' { 2 } else { 1 };
                }
                let end = end.min(text.len());
                last_string = Some(&text[i + 1..end]);
                i = end + 1;
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_HEADER_NESTING {
                    return Err(bad(format!(
                        "the header nests brackets deeper than {MAX_HEADER_NESTING} levels"
                    )));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b':' if depth == 1 && last_string == Some(b"shape".as_slice()) => {
                let rest = &text[i + 1..];
                let open = rest.iter().position(|c| !c.is_ascii_whitespace());
                if let Some(o) = open.filter(|&o| matches!(rest[o], b'(' | b'[')) {
                    let close = rest[o..]
                        .iter()
                        .position(|&c| matches!(c, b')' | b']'))
                        .map_or(rest.len(), |p| o + p);
                    check_shape(path, &rest[o + 1..close], data_len)?;
                }
            }
            _ => {}
        }
        if !text[i].is_ascii_whitespace() && text[i] != b':' {
            last_string = None;
        }
        i += 1;
    }
    f.rewind().map_err(io)
}

/// The dimensions of a `shape` tuple must be decimal integers whose product fits in u64 (also
/// skipping zeros: strides multiply them), stays within
/// [`crate::limits::MAX_TENSOR_ELEMENTS`] (checked first: a real but too large file is told
/// the limit) and does not exceed the bytes of data.
fn check_shape(path: &Path, dims: &[u8], data_len: u64) -> Result<(), NpyError> {
    check_shape_text(dims, data_len).map_err(|(m, fix)| err(path, m, fix))
}

fn check_shape_text(dims: &[u8], data_len: u64) -> Result<(), (String, String)> {
    let bad = |m: String| (m, "rewrite the file with numpy.save".to_string());
    let text = String::from_utf8_lossy(dims);
    let mut elements: u64 = 1;
    let mut nonzero: u64 = 1;
    for d in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let digits = d.strip_suffix('L').unwrap_or(d);
        let n: u64 = digits
            .parse()
            .ok()
            .filter(|_| digits.bytes().all(|c| c.is_ascii_digit()))
            .ok_or_else(|| {
                bad(format!(
                    "shape entry `{d}` is not a dimension (a decimal below 2^64)"
                ))
            })?;
        elements = elements.saturating_mul(n);
        nonzero = nonzero
            .checked_mul(n.max(1))
            .ok_or_else(|| bad(format!("shape ({text}) has more than 2^64 elements")))?;
    }
    let max = crate::limits::MAX_TENSOR_ELEMENTS;
    if elements > max {
        return Err((
            format!("shape ({text}) has {elements} elements, more than {max} (the kernels index with 32-bit int)"),
            format!("pass at most {max} elements per tensor (docs/cli.md, size limits)"),
        ));
    }
    if elements > data_len {
        return Err(bad(format!(
            "shape ({text}) claims {elements} elements but the file has {data_len} bytes of data (truncated?)"
        )));
    }
    Ok(())
}

/// Read a float32 (`<f4`) array of any rank: its shape and its values in C order, every value
/// finite (upstream gradients such as `dlse`).
pub fn read_f32(path: &Path) -> Result<(Vec<u64>, Vec<f32>), NpyError> {
    let npy = open(path)?;
    let shape: Vec<u64> = npy.shape().to_vec();
    let d = descr(&npy);
    if d != "<f4" {
        return Err(err(
            path,
            format!("dtype {d}, expected float32"),
            "save the array as float32 ('<f4'), e.g. numpy.save(path, x.astype(numpy.float32))",
        ));
    }
    let v: Vec<f32> = read_vec(path, npy)?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(err(
            path,
            format!("element {i} (flat, C order) is NaN or Inf"),
            "upstream gradients must be finite: find where the NaN/Inf comes from",
        ));
    }
    Ok((shape, v))
}
