//! Python objects (chat messages, request overrides, `extra_body`) as JSON values, extracted
//! directly rather than through JSON text. Errors are `ConfigError`s naming the place, e.g.
//! `requests[3].body.stop[0]: expected a JSON value ..., got set`.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

use crate::errors::config_err;

/// Deeper nesting than this is refused (it is a reference cycle in practice).
const MAX_DEPTH: usize = 100;

/// One step of the path to a bad value.
enum Step {
    Index(usize),
    Key(String),
}

/// What is wrong and where, innermost step first (filled in while unwinding).
struct Bad {
    steps: Vec<Step>,
    what: String,
}

impl Bad {
    fn new(what: impl Into<String>) -> Bad {
        Bad { steps: Vec::new(), what: what.into() }
    }

    fn at(mut self, step: Step) -> Bad {
        self.steps.push(step);
        self
    }

    fn into_err(self, root: &str) -> PyErr {
        let mut place = root.to_string();
        for step in self.steps.iter().rev() {
            match step {
                Step::Index(i) => place.push_str(&format!("[{i}]")),
                Step::Key(k) if place.is_empty() => place.push_str(k),
                Step::Key(k) => place.push_str(&format!(".{k}")),
            }
        }
        config_err(format!("{place}: {}", self.what))
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".to_string())
}

fn convert(obj: &Bound<'_, PyAny>, depth: usize) -> Result<Value, Bad> {
    if depth > MAX_DEPTH {
        return Err(Bad::new(format!(
            "nested more than {MAX_DEPTH} levels deep (a list or dict that contains itself?)"
        )));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    // bool before int: Python's bool is a subclass of int.
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(Bad::new("integer out of JSON's 64-bit range"));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let v = f.value();
        return Number::from_f64(v).map(Value::Number).ok_or_else(|| Bad::new(format!("{v} is not a JSON number")));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return s.to_str().map(|s| Value::String(s.to_string())).map_err(|e| Bad::new(e.to_string()));
    }
    if let Ok(list) = obj.cast::<PyList>() {
        return list
            .iter()
            .enumerate()
            .map(|(i, item)| convert(&item, depth + 1).map_err(|b| b.at(Step::Index(i))))
            .collect::<Result<_, _>>()
            .map(Value::Array);
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        return tuple
            .iter()
            .enumerate()
            .map(|(i, item)| convert(&item, depth + 1).map_err(|b| b.at(Step::Index(i))))
            .collect::<Result<_, _>>()
            .map(Value::Array);
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        return convert_dict(dict, depth).map(Value::Object);
    }
    Err(Bad::new(format!(
        "expected a JSON value (None, bool, int, float, str, list, tuple or dict), got {}",
        type_name(obj)
    )))
}

fn convert_dict(dict: &Bound<'_, PyDict>, depth: usize) -> Result<Map<String, Value>, Bad> {
    let mut map = Map::with_capacity(dict.len());
    for (key, value) in dict.iter() {
        let Ok(key) = key.cast::<PyString>() else {
            return Err(Bad::new(format!("dict keys must be strings, got {} {}", type_name(&key), key)));
        };
        let key = key.to_str().map_err(|e| Bad::new(e.to_string()))?.to_string();
        let value = convert(&value, depth + 1).map_err(|b| b.at(Step::Key(key.clone())))?;
        map.insert(key, value);
    }
    Ok(map)
}

/// `obj` as a JSON value; `root` names it in errors (`messages[2]`).
pub fn to_json(obj: &Bound<'_, PyAny>, root: &str) -> PyResult<Value> {
    convert(obj, 0).map_err(|b| b.into_err(root))
}

/// `obj`, which must be a dict, as a JSON object; `root` names it in errors (`extra_body`).
pub fn to_json_object(obj: &Bound<'_, PyAny>, root: &str) -> PyResult<Map<String, Value>> {
    let Ok(dict) = obj.cast::<PyDict>() else {
        return Err(config_err(format!("{root} must be a dict, got {}", type_name(obj))));
    };
    convert_dict(dict, 0).map_err(|b| b.into_err(root))
}

/// The items of a list or tuple `obj` (`root` names it in errors).
pub fn sequence_items<'py>(obj: &Bound<'py, PyAny>, root: &str) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if let Ok(list) = obj.cast::<PyList>() {
        return Ok(list.iter().collect());
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        return Ok(tuple.iter().collect());
    }
    Err(config_err(format!("{root} must be a list, got {}", type_name(obj))))
}
