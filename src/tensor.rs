//! `HostTensor`: a dense row-major f32 array in host memory with its shape.
//! It is how weights reach a backend and how inputs and outputs cross the API.

/// A dense row-major f32 array in host memory with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first; their product is `data.len()`.
    pub shape: Vec<usize>,
    /// Elements in row-major order.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Wraps `data` as `shape`; panics if the element counts differ.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape {shape:?} does not match data");
        HostTensor { shape, data }
    }

    /// A tensor of `shape` filled with 0.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        HostTensor { shape, data: vec![0.0; n] }
    }

    /// Element count.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Same data, new shape with the same element count (e.g. a [64, 64, 1] conv as [64, 64]).
    pub fn reshaped(self, shape: Vec<usize>) -> Self {
        HostTensor::new(shape, self.data)
    }

    /// Transpose of a 2-D tensor ([64, T'] channel-major <-> [T', 64] token-major).
    pub fn transposed(&self) -> Self {
        assert_eq!(self.shape.len(), 2, "transpose needs a 2-D tensor");
        let (r, c) = (self.shape[0], self.shape[1]);
        HostTensor::new(vec![c, r], transpose(&self.data, r, c))
    }
}

/// Transpose of a row-major `rows x cols` matrix.
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}
