//! A memory-mapped safetensors file. Only the JSON header is parsed at open;
//! a tensor's bytes are read (and converted to f32) when it is fetched, so
//! tensors the engine does not use cost nothing. fp16 tensors can also be
//! fetched as their stored bits, for backends that keep fp16 weights.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};

use crate::error::{Error, Result};
use crate::tensor::HostTensor;

/// A memory-mapped safetensors checkpoint with its parsed, validated header.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    metadata: Metadata,
    /// Offset of the first data byte: 8 bytes of header length + the header.
    data_start: usize,
}

impl SafetensorsFile {
    /// Maps the file at `path` and validates its header and data offsets.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only; like every mmap user we assume it is not
        // truncated while mapped (a checkpoint being rewritten under a running engine).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bad = |reason: String| Error::BadSafetensors { path: path.to_path_buf(), reason };
        check_header(&mmap).map_err(bad)?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| bad(e.to_string()))?;
        let data_start = 8 + header_len;
        for (name, info) in metadata.tensors() {
            let (start, end) = info.data_offsets;
            if data_start + end > mmap.len() || start > end {
                return Err(bad(format!("tensor `{name}` points past the end of the file (truncated?)")));
            }
        }
        Ok(SafetensorsFile { path: path.to_path_buf(), mmap, metadata, data_start })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file holds a tensor named `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.metadata.info(key).is_some()
    }

    /// Names of all tensors in the file.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.metadata.tensors().into_keys().collect();
        keys.sort();
        keys
    }

    /// Free-form string metadata stored in the header (`__metadata__`).
    pub fn user_metadata(&self, key: &str) -> Option<&str> {
        self.metadata.metadata().as_ref()?.get(key).map(String::as_str)
    }

    /// Tells the kernel that the bytes of `key` are no longer needed, so a
    /// one-pass reader (`convert`) does not keep a whole checkpoint resident.
    /// A hint: later reads still work (the pages come back from the file).
    pub fn release(&self, key: &str) {
        #[cfg(unix)]
        if let Some(info) = self.metadata.info(key) {
            let page = 4096;
            let start = (self.data_start + info.data_offsets.0) / page * page;
            let end = self.data_start + info.data_offsets.1;
            // SAFETY: a read-only private file mapping; dropping its pages only makes
            // the next access read them from the file again. Nothing borrows them now.
            let _ = unsafe { self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
        }
    }

    /// `release` for the whole file.
    pub fn release_all(&self) {
        #[cfg(unix)]
        // SAFETY: as in `release`.
        let _ = unsafe { self.mmap.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
    }

    /// Stored dtype of `key` (`F32`, `F16`, ...).
    pub fn dtype_name(&self, key: &str) -> Option<String> {
        self.metadata.info(key).map(|i| format!("{:?}", i.dtype))
    }

    /// Shape of tensor `key` as stored, or `None` if absent.
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.metadata.info(key).map(|i| i.shape.clone())
    }

    /// The tensor `key` in f32, refusing any shape other than `expected`.
    pub fn tensor(&self, key: &str, expected: &[usize]) -> Result<HostTensor> {
        let t = self.tensor_any_shape(key)?;
        self.check_shape(key, expected, &t.shape)?;
        Ok(t)
    }

    /// The tensor `key` as its stored fp16 bits (no conversion; a copy only
    /// when its bytes are not 2-byte aligned in the file, which safetensors
    /// does not promise), refusing any shape other than `expected`; `None` when
    /// it is stored as another dtype. Errors are exactly those of `tensor`.
    pub fn tensor_f16(&self, key: &str, expected: &[usize]) -> Result<Option<Cow<'_, [u16]>>> {
        let (info, bytes) = self.stored(key)?;
        self.check_shape(key, expected, &info.shape)?;
        if info.dtype != Dtype::F16 {
            return Ok(None);
        }
        let aligned =
            if cfg!(target_endian = "little") { bytemuck::try_cast_slice::<u8, u16>(bytes).ok() } else { None };
        Ok(Some(match aligned {
            Some(bits) => Cow::Borrowed(bits),
            None => Cow::Owned(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect()),
        }))
    }

    fn check_shape(&self, key: &str, expected: &[usize], found: &[usize]) -> Result<()> {
        if found != expected {
            return Err(Error::ShapeMismatch {
                key: key.into(),
                file: self.path.display().to_string(),
                expected: expected.to_vec(),
                found: found.to_vec(),
            });
        }
        Ok(())
    }

    /// The header entry and the stored bytes of `key`, checked: present, of a
    /// dtype the engine reads, and with as many bytes as its shape says.
    fn stored(&self, key: &str) -> Result<(&TensorInfo, &[u8])> {
        let file = self.path.display().to_string();
        let info =
            self.metadata.info(key).ok_or_else(|| Error::MissingTensor { key: key.into(), file: file.clone() })?;
        let (start, end) = info.data_offsets;
        let bytes = &self.mmap[self.data_start + start..self.data_start + end];
        let count: usize = info.shape.iter().product();
        let width = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(Error::UnsupportedDtype { key: key.into(), file, dtype: format!("{other:?}") });
            }
        };
        if bytes.len() != count * width {
            return Err(Error::BadSafetensors {
                path: self.path.clone(),
                reason: format!("tensor `{key}` has {} bytes for {count} elements", bytes.len()),
            });
        }
        Ok((info, bytes))
    }

    /// The tensor `key` in f32, whatever its shape.
    pub fn tensor_any_shape(&self, key: &str) -> Result<HostTensor> {
        let (info, bytes) = self.stored(key)?;
        // The element count comes from the file: a failed allocation is an error, not an abort.
        let count: usize = info.shape.iter().product();
        let mut data: Vec<f32> = Vec::new();
        data.try_reserve_exact(count).map_err(|_| {
            Error::Limit(format!(
                "cannot allocate {} MiB for tensor `{key}` of {}",
                (count * 4) >> 20,
                self.path.display()
            ))
        })?;
        // Bytes are little-endian and, in general, not aligned for f32 in the mmap.
        match info.dtype {
            Dtype::F32 => data.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            Dtype::F16 => data.extend(bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())),
            _ => data.extend(bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        }
        Ok(HostTensor::new(info.shape.clone(), data))
    }
}

/// What the safetensors crate lets through but the format forbids: a header
/// that does not start with `{` (the format requires it) and a key that
/// appears twice in any JSON object of the header (tensor names, the fields of
/// one tensor, `__metadata__`: the format requires unique names, and a JSON
/// reader would silently keep only one of them). Only the bytes the length
/// prefix claims are looked at, and only when the file holds them; the crate
/// reports every other length problem.
fn check_header(file: &[u8]) -> std::result::Result<(), String> {
    let Some(len) = file.get(..8) else { return Ok(()) };
    let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    let Some(header) = usize::try_from(len).ok().and_then(|n| file.get(8..8usize.checked_add(n)?)) else {
        return Ok(());
    };
    if header.first() != Some(&b'{') {
        return Err("the header does not start with `{` (the format requires a JSON object first)".into());
    }
    // A header that is not JSON is the crate's to report (it parses the same bytes next).
    match serde_json::from_slice::<UniqueKeys>(header) {
        Ok(UniqueKeys(Some(key))) => Err(format!("key `{key}` appears twice in the header (the format forbids it)")),
        _ => Ok(()),
    }
}

/// Any JSON value; holds the first key found repeated within one object, if any.
struct UniqueKeys(Option<String>);

impl<'de> serde::de::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        let mut repeated = None;
        while let Some(key) = map.next_key::<String>()? {
            let inner = map.next_value::<UniqueKeys>()?.0.map(|k| format!("{key}.{k}"));
            if repeated.is_none() {
                repeated = if seen.contains(&key) { Some(key.clone()) } else { inner };
            }
            seen.insert(key);
        }
        Ok(UniqueKeys(repeated))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<UniqueKeys, A::Error> {
        let mut repeated = None;
        while let Some(UniqueKeys(inner)) = seq.next_element::<UniqueKeys>()? {
            repeated = repeated.or(inner);
        }
        Ok(UniqueKeys(repeated))
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<UniqueKeys, E> {
        Ok(UniqueKeys(None))
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<UniqueKeys, E> {
        Ok(UniqueKeys(None))
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<UniqueKeys, E> {
        Ok(UniqueKeys(None))
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<UniqueKeys, E> {
        Ok(UniqueKeys(None))
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<UniqueKeys, E> {
        Ok(UniqueKeys(None))
    }
    fn visit_unit<E>(self) -> std::result::Result<UniqueKeys, E> {
        Ok(UniqueKeys(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn write(dir: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> PathBuf {
        let views: Vec<(&str, TensorView)> =
            tensors.iter().map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap())).collect();
        let path = dir.join("t.safetensors");
        safetensors::serialize_to_file(views, None, &path).unwrap();
        path
    }

    #[test]
    fn f32_f16_and_bf16_are_read_as_f32() {
        let dir = tempfile::tempdir().unwrap();
        let vals = [1.5f32, -2.25, 0.0, 1024.0];
        let f32b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16b: Vec<u8> = vals.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        let bf16b: Vec<u8> = vals.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
        let path = write(
            dir.path(),
            &[
                ("a", Dtype::F32, vec![2, 2], f32b),
                ("b", Dtype::F16, vec![4], f16b),
                ("c", Dtype::BF16, vec![1, 4], bf16b),
            ],
        );
        let f = SafetensorsFile::open(&path).unwrap();
        assert_eq!(f.tensor("a", &[2, 2]).unwrap().data, vals);
        assert_eq!(f.tensor("b", &[4]).unwrap().data, vals);
        assert_eq!(f.tensor("c", &[1, 4]).unwrap().data, vals);
        assert_eq!(f.keys(), ["a", "b", "c"]);
    }

    #[test]
    fn errors_name_the_key_and_the_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path =
            write(dir.path(), &[("ints", Dtype::I64, vec![2], vec![0; 16]), ("w", Dtype::F32, vec![3], vec![0; 12])]);
        let f = SafetensorsFile::open(&path).unwrap();
        let e = f.tensor("w", &[4]).unwrap_err().to_string();
        assert!(e.contains("`w`") && e.contains("[3]") && e.contains("[4]"), "{e}");
        let e = f.tensor("nope", &[1]).unwrap_err().to_string();
        assert!(e.contains("`nope`") && e.contains("missing"), "{e}");
        let e = f.tensor("ints", &[2]).unwrap_err().to_string();
        assert!(e.contains("`ints`") && e.contains("I64"), "{e}");
    }

    #[test]
    fn f16_tensors_are_read_as_their_stored_bits() {
        let dir = tempfile::tempdir().unwrap();
        // Normal, negative, zero, negative zero, subnormal, largest finite, infinity, NaN.
        let bits: [u16; 8] = [0x3e00, 0xc080, 0x0000, 0x8000, 0x0001, 0x7bff, 0x7c00, 0x7e01];
        let f16b: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let f32b: Vec<u8> = bits.iter().flat_map(|&b| half::f16::from_bits(b).to_f32().to_le_bytes()).collect();
        let bf16b: Vec<u8> = [1.5f32, 2.0].iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
        let path = write(
            dir.path(),
            &[
                ("h", Dtype::F16, vec![2, 4], f16b),
                ("s", Dtype::F32, vec![2, 4], f32b),
                ("b", Dtype::BF16, vec![1, 2], bf16b),
                ("ints", Dtype::I64, vec![2], vec![0; 16]),
            ],
        );
        let f = SafetensorsFile::open(&path).unwrap();
        let got = f.tensor_f16("h", &[2, 4]).unwrap().expect("an fp16 tensor");
        assert_eq!(*got, bits);
        // safetensors pads its header to 8 bytes: the bits are borrowed from the mmap.
        assert!(matches!(got, Cow::Borrowed(_)));
        assert_eq!(f.tensor_f16("s", &[2, 4]).unwrap(), None);
        assert_eq!(f.tensor_f16("b", &[1, 2]).unwrap(), None);
        // Every error is the one `tensor` gives, whatever the stored dtype.
        for (key, shape) in [("h", &[4, 2][..]), ("h", &[8]), ("s", &[8]), ("nope", &[1]), ("ints", &[2])] {
            let want = f.tensor(key, shape).unwrap_err().to_string();
            let got = f.tensor_f16(key, shape).unwrap_err().to_string();
            assert_eq!(got, want, "{key} {shape:?}");
        }
        let e = f.tensor_f16("h", &[4, 2]).unwrap_err().to_string();
        assert!(e.contains("`h`") && e.contains("[2, 4]") && e.contains("[4, 2]"), "{e}");
    }

    #[test]
    fn f16_tensors_at_odd_offsets_are_copied() {
        // A header padded so that the data starts at an odd offset in the file
        // (safetensors' writer never does this, other writers may).
        let dir = tempfile::tempdir().unwrap();
        let bits: [u16; 3] = [0x3c00, 0x8001, 0x7bff];
        let mut header = r#"{"w":{"dtype":"F16","shape":[3,1],"data_offsets":[0,6]}}"#.to_string();
        while (8 + header.len()).is_multiple_of(2) {
            header.push(' ');
        }
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(bits.iter().flat_map(|b| b.to_le_bytes()));
        let path = dir.path().join("odd.safetensors");
        std::fs::write(&path, bytes).unwrap();
        let f = SafetensorsFile::open(&path).unwrap();
        let got = f.tensor_f16("w", &[3, 1]).unwrap().expect("an fp16 tensor");
        assert!(matches!(got, Cow::Owned(_)));
        assert_eq!(*got, bits);
        let as_f32: Vec<f32> = bits.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect();
        assert_eq!(f.tensor("w", &[3, 1]).unwrap().data, as_f32);
    }

    /// A file with `header` (padded as the format asks) and `data` after it.
    fn raw(dir: &Path, header: &str, data: &[u8]) -> PathBuf {
        let mut header = header.to_string();
        while !(8 + header.len()).is_multiple_of(8) {
            header.push(' ');
        }
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        let path = dir.join("raw.safetensors");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn headers_the_format_forbids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = |name: &str, start: usize, end: usize| {
            format!(r#""{name}":{{"dtype":"F32","shape":[{}],"data_offsets":[{start},{end}]}}"#, (end - start) / 4)
        };
        let ok = format!("{{{},{}}}", t("a", 0, 8), t("b", 8, 16));
        assert!(SafetensorsFile::open(&raw(dir.path(), &ok, &[0; 16])).is_ok());
        let cases = [
            // The same tensor name twice: a reader would keep one silently.
            (format!("{{{},{}}}", t("a", 0, 8), t("a", 8, 16)), vec![0u8; 16], "`a` appears twice"),
            // A key repeated inside one tensor's entry, and inside `__metadata__`.
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"shape":[2]}}"#.to_string(),
                vec![0; 8],
                "`a.shape` appears twice",
            ),
            (
                format!(r#"{{"__metadata__":{{"format":"x","format":"y"}},{}}}"#, t("a", 0, 8)),
                vec![0; 8],
                "`__metadata__.format` appears twice",
            ),
            // Overlapping, out-of-range and size-mismatched data, unknown dtype, no object first.
            (format!("{{{},{}}}", t("a", 0, 8), t("b", 4, 12)), vec![0; 12], "raw.safetensors"),
            (format!("{{{}}}", t("a", 0, 8)), vec![0; 4], "raw.safetensors"),
            (r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#.into(), vec![0; 8], "raw.safetensors"),
            (r#"{"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}"#.into(), vec![0; 8], "raw.safetensors"),
            (
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}}"#.into(),
                vec![0; 8],
                "raw.safetensors",
            ),
            (format!(" {{{}}}", t("a", 0, 8)), vec![0; 8], "start with `{`"),
        ];
        for (header, data, needle) in cases {
            let e = SafetensorsFile::open(&raw(dir.path(), &header, &data)).err();
            let e = e.unwrap_or_else(|| panic!("accepted: {header}")).to_string();
            assert!(e.contains(needle), "{header}: {e}");
        }
        // A header length past the file, or absurd, is an error, not an allocation.
        let path = dir.path().join("long.safetensors");
        for len in [1u64 << 40, u64::MAX, 200] {
            let mut bytes = len.to_le_bytes().to_vec();
            bytes.extend_from_slice(b"{}");
            std::fs::write(&path, bytes).unwrap();
            assert!(SafetensorsFile::open(&path).is_err(), "{len}");
        }
    }

    #[test]
    fn truncated_files_are_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &[("w", Dtype::F32, vec![1000], vec![0; 4000])]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let e = SafetensorsFile::open(&path).err().expect("truncated file accepted").to_string();
        assert!(e.contains("t.safetensors"), "{e}");
    }
}
