//! Safetensors files: every tensor read as f64 whatever its stored dtype, and named tensors written in one
//! dtype. The format's own crate does the parsing; this module adds the project's error messages (each
//! names the file and the tensor) and the dtype conversions. Files are written by `std::fs`, so they get
//! the permissions of any other file the process creates (the umask's), not the crate's private 0600
//! temporary files.

use crate::error::{Error, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Tensors read from a safetensors file: name → (shape, values as f64).
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

/// A tensor to write: its name, shape and little-endian bytes in the file's dtype.
pub type Encoded = (String, Vec<usize>, Vec<u8>);

/// Writes named tensors, all of dtype `dtype`, as a safetensors file with `metadata` (serialised in
/// memory, then written with `std::fs::write`: a plain file, created or truncated).
pub fn write(
    path: &Path,
    dtype: Dtype,
    tensors: &[Encoded],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            let view =
                TensorView::new(dtype, shape.clone(), bytes).map_err(|e| Error::SafeTensors {
                    path: path.into(),
                    msg: format!("{name}: {e}"),
                })?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| Error::SafeTensors {
        path: path.into(),
        msg: e.to_string(),
    })?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Read every tensor of a safetensors file as f64 (F32, F64, BF16 and F16 accepted), keyed by name.
pub fn read(path: &Path) -> Result<TensorMap> {
    if path.is_dir() {
        return Err(Error::bad_file(
            path,
            "safetensors",
            "is a directory; expected a .safetensors file",
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is opened read-only and only read during this function; a concurrent writer
    // truncating it is outside our contract (checkpoints are written to a temp dir and renamed).
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| Error::SafeTensors {
        path: path.into(),
        msg: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f64> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
                .collect(),
            other => {
                return Err(Error::bad_file(
                    path,
                    &name,
                    format!("dtype {other:?}; expected F32, F64, BF16 or F16"),
                ))
            }
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}
