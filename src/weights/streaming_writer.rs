//! A safetensors writer that streams tensors to disk one at a time, so that
//! converting a multi-gigabyte checkpoint holds one tensor in memory, not the
//! whole file. The layout (header, then data in declaration order) is fixed
//! up front from the list of names, dtypes and shapes.
//!
//! Output goes to a temporary file next to the destination, renamed on
//! `finish`; dropping the writer before that removes it, so an error never
//! leaves a partial file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::partial_file::partial_path_for;
use crate::tensor::HostTensor;

/// Element type a tensor is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    /// IEEE f32, 4 bytes.
    F32,
    /// IEEE f16, 2 bytes.
    F16,
}

impl StoredDtype {
    fn size(self) -> usize {
        match self {
            StoredDtype::F32 => 4,
            StoredDtype::F16 => 2,
        }
    }
    fn name(self) -> &'static str {
        match self {
            StoredDtype::F32 => "F32",
            StoredDtype::F16 => "F16",
        }
    }
}

/// One tensor of the file to write.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// Tensor name (its key in the header).
    pub name: String,
    /// Element type the data is stored as.
    pub dtype: StoredDtype,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
}

/// Writes a safetensors file tensor by tensor, in `entries` order, to a partial file renamed into place when complete.
pub struct StreamingWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    entries: Vec<TensorEntry>,
    next: usize,
}

impl StreamingWriter {
    /// Writes the header for `entries` (with `metadata`) to a partial file next to `path`.
    pub fn create(path: &Path, entries: Vec<TensorEntry>, metadata: &BTreeMap<String, String>) -> Result<Self> {
        let tmp = partial_path_for(path)?;

        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::to_value(metadata).expect("strings serialise"));
        let mut offset = 0usize;
        for e in &entries {
            let bytes = e.shape.iter().product::<usize>() * e.dtype.size();
            header.insert(
                e.name.clone(),
                serde_json::json!({ "dtype": e.dtype.name(), "shape": e.shape, "data_offsets": [offset, offset + bytes] }),
            );
            offset += bytes;
        }
        let mut json = serde_json::to_vec(&header).expect("header serialises");
        // Pad with spaces so the data starts 8-byte aligned (as the reference writer does).
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let file = File::create(&tmp).map_err(|e| Error::write(path, e))?;
        let mut writer =
            StreamingWriter { path: path.to_path_buf(), tmp, out: Some(BufWriter::new(file)), entries, next: 0 };
        writer.put(&(json.len() as u64).to_le_bytes())?;
        writer.put(&json)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self.out.as_mut().expect("writer is open");
        out.write_all(bytes).map_err(|e| Error::write(&self.path, e))
    }

    /// Writes the next tensor; it must be the next entry of the list, with its shape.
    pub fn write(&mut self, name: &str, tensor: &HostTensor) -> Result<()> {
        let entry =
            self.entries.get(self.next).cloned().ok_or_else(|| {
                Error::InvalidInput(format!("tensor `{name}` written after the last declared tensor"))
            })?;
        if entry.name != name || entry.shape != tensor.shape {
            return Err(Error::InvalidInput(format!(
                "expected tensor `{}` {:?} next, got `{name}` {:?}",
                entry.name, entry.shape, tensor.shape
            )));
        }
        let bytes: Vec<u8> = match entry.dtype {
            StoredDtype::F32 => tensor.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            StoredDtype::F16 => tensor.data.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        };
        self.put(&bytes)?;
        self.next += 1;
        Ok(())
    }

    /// Flushes, syncs and moves the file into place once every tensor was written.
    pub fn finish(mut self) -> Result<()> {
        if self.next != self.entries.len() {
            return Err(Error::InvalidInput(format!(
                "only {} of {} tensors were written",
                self.next,
                self.entries.len()
            )));
        }
        let out = self.out.take().expect("writer is open");
        let file = out.into_inner().map_err(|e| Error::write(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::write(&self.path, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::write(&self.path, e))?;
        Ok(())
    }
}

impl Drop for StreamingWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::SafetensorsFile;

    #[test]
    fn written_file_reads_back_with_the_declared_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.safetensors");
        let a = HostTensor::new(vec![2, 3], vec![1.0, -2.0, 3.5, 0.25, 1e-3, 7.0]);
        let b = HostTensor::new(vec![1], vec![0.1]);
        let entries = vec![
            TensorEntry { name: "a".into(), dtype: StoredDtype::F16, shape: vec![2, 3] },
            TensorEntry { name: "b".into(), dtype: StoredDtype::F32, shape: vec![1] },
        ];
        let meta = BTreeMap::from([("format".to_string(), "test".to_string())]);
        let mut w = StreamingWriter::create(&path, entries, &meta).unwrap();
        w.write("a", &a).unwrap();
        w.write("b", &b).unwrap();
        w.finish().unwrap();
        let f = SafetensorsFile::open(&path).unwrap();
        let got = f.tensor("a", &[2, 3]).unwrap().data;
        for (g, e) in got.iter().zip(&a.data) {
            assert!((g - e).abs() <= 1e-3 * e.abs());
        }
        assert_eq!(f.tensor("b", &[1]).unwrap().data, vec![0.1]);
        assert_eq!(f.user_metadata("format"), Some("test"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn an_unfinished_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.safetensors");
        let entries = vec![TensorEntry { name: "a".into(), dtype: StoredDtype::F32, shape: vec![2] }];
        let mut w = StreamingWriter::create(&path, entries, &BTreeMap::new()).unwrap();
        assert!(w.write("wrong", &HostTensor::new(vec![2], vec![0.0; 2])).is_err());
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
