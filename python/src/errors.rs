//! The exception classes and the mapping of `lova_fast::Error` onto them.
//!
//! Python's convention is that bad arguments raise ValueError and failures of
//! the machine raise RuntimeError; users also want one class to catch all of
//! ours. Multiple inheritance gives both, which `create_exception!` cannot
//! express (one base), so the classes are defined in Python source at import.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

const SOURCE: &std::ffi::CStr = c"
class LovaError(Exception):
    '''Base class of every error lova_fast raises.'''
    __module__ = 'lova_fast'

class InputError(LovaError, ValueError):
    '''Bad input or arguments: an unreadable or too long video, features of the
    wrong shape, NaN values, an invalid setting, a weight file that is not one.'''
    __module__ = 'lova_fast'

class DeviceError(LovaError, RuntimeError):
    '''The device failed: CUDA could not start or a CUDA call failed, or a
    batch this input was sampled in failed.'''
    __module__ = 'lova_fast'

class Cancelled(LovaError):
    '''The generation was cancelled before it finished.'''
    __module__ = 'lova_fast'
";

struct Classes {
    lova: Py<PyType>,
    input: Py<PyType>,
    device: Py<PyType>,
    cancelled: Py<PyType>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

fn classes(py: Python<'_>) -> &Classes {
    CLASSES.get_or_init(py, || {
        // The source above is ours and fixed: failing to run it is a bug in
        // this file, caught by every test.
        let module = PyModule::from_code(py, SOURCE, c"lova_fast/_errors.py", c"lova_fast._errors")
            .expect("the exception classes compile");
        let get = |name: &str| -> Py<PyType> {
            module.getattr(name).and_then(|c| Ok(c.cast_into::<PyType>()?.unbind())).expect("class defined above")
        };
        Classes {
            lova: get("LovaError"),
            input: get("InputError"),
            device: get("DeviceError"),
            cancelled: get("Cancelled"),
        }
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let c = classes(m.py());
    m.add("LovaError", c.lova.clone_ref(m.py()))?;
    m.add("InputError", c.input.clone_ref(m.py()))?;
    m.add("DeviceError", c.device.clone_ref(m.py()))?;
    m.add("Cancelled", c.cancelled.clone_ref(m.py()))?;
    Ok(())
}

fn new_err(py: Python<'_>, class: &Py<PyType>, message: String) -> PyErr {
    PyErr::from_type(class.bind(py).clone(), message)
}

/// An InputError (a ValueError) with `message`.
pub fn input_error(message: &str) -> PyErr {
    Python::attach(|py| new_err(py, &classes(py).input, message.to_string()))
}

/// A LovaError with `message` (for internal errors).
pub fn lova_error(message: String) -> PyErr {
    Python::attach(|py| new_err(py, &classes(py).lova, message))
}

/// The exception for a library error, with the library's message (the text
/// the CLI prints after the input's name).
pub fn to_py_err(py: Python<'_>, error: lova_fast::Error) -> PyErr {
    use lova_fast::Error as E;
    let c = classes(py);
    // No catch-all arm: a new error variant must be given a class here.
    let class = match &error {
        E::Io { .. }
        | E::BadSafetensors { .. }
        | E::Config { .. }
        | E::UnsupportedConfig { .. }
        | E::MissingTensor { .. }
        | E::ShapeMismatch { .. }
        | E::UnsupportedDtype { .. }
        | E::NonFinite { .. }
        | E::OutOfRange { .. }
        | E::Limit(_)
        | E::InvalidInput(_)
        | E::Video { .. } => &c.input,
        E::Cuda(_) | E::UnsupportedOp { .. } | E::Upload { .. } | E::Batch(_) | E::ToolMissing { .. } => &c.device,
        E::Cancelled => &c.cancelled,
    };
    new_err(py, class, error.to_string())
}
