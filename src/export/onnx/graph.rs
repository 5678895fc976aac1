//! A small builder of ONNX graphs: typed nodes and attributes, float/int initializers,
//! fresh value names — the only way kestrel writes ONNX (never text templates).

use super::proto::{
    AttributeProto, Dimension, DimensionValue, GraphProto, NodeProto, TensorProto, TensorShapeProto, TypeProto,
    TypeProtoTensor, ValueInfoProto, attribute_type, data_type,
};

/// An attribute value of a node.
#[derive(Debug, Clone)]
pub enum Attr {
    /// `i`.
    Int(i64),
    /// `s`.
    Str(&'static str),
    /// `ints`.
    Ints(Vec<i64>),
}

/// One dimension of a graph input/output: fixed, or symbolic (dynamic).
#[derive(Debug, Clone)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A named dynamic size, e.g. `batch`.
    Param(&'static str),
}

/// Nodes and initializers under construction; values get unique names `v1`, `v2`, ….
#[derive(Debug, Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    counter: usize,
}

impl GraphBuilder {
    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
    }

    /// Adds an `f32` constant of shape `dims` (row-major `data`) and returns its name.
    ///
    /// Panics (a kestrel bug) when `data.len()` is not the product of `dims`.
    pub fn float(&mut self, name_hint: &str, dims: &[i64], data: &[f32]) -> String {
        assert_eq!(dims.iter().product::<i64>() as usize, data.len(), "initializer {name_hint}: shape {dims:?}");
        let name = self.fresh(&format!("{name_hint}_"));
        let raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto { dims: dims.to_vec(), data_type: data_type::FLOAT, name: name.clone(), raw_data });
        name
    }

    /// Adds an `i64` 1-D constant and returns its name.
    pub fn ints(&mut self, name_hint: &str, data: &[i64]) -> String {
        let name = self.fresh(&format!("{name_hint}_"));
        let raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            dims: vec![data.len() as i64],
            data_type: data_type::INT64,
            name: name.clone(),
            raw_data,
        });
        name
    }

    /// Adds a node `op(inputs)` with `attrs` and one output, returning the output's name
    /// (`output` when given, else a fresh one).
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>, output: Option<&str>) -> String {
        let out = output.map_or_else(|| self.fresh("v"), str::to_owned);
        let name = self.fresh(&format!("{op}_"));
        let attribute = attrs
            .into_iter()
            .map(|(n, a)| {
                let mut p = AttributeProto { name: n.to_owned(), ..Default::default() };
                match a {
                    Attr::Int(i) => (p.i, p.r#type) = (i, attribute_type::INT),
                    Attr::Str(s) => (p.s, p.r#type) = (s.as_bytes().to_vec(), attribute_type::STRING),
                    Attr::Ints(v) => (p.ints, p.r#type) = (v, attribute_type::INTS),
                }
                p
            })
            .collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![out.clone()],
            name,
            op_type: op.to_owned(),
            attribute,
            domain: String::new(),
        });
        out
    }

    /// The finished graph with its `inputs` and `outputs` (name, element type, shape).
    pub fn finish(self, name: &str, inputs: &[(&str, i32, Vec<Dim>)], outputs: &[(&str, i32, Vec<Dim>)]) -> GraphProto {
        GraphProto {
            node: self.nodes,
            name: name.to_owned(),
            initializer: self.initializers,
            doc_string: String::new(),
            input: inputs.iter().map(value_info).collect(),
            output: outputs.iter().map(value_info).collect(),
        }
    }
}

fn value_info((name, elem_type, dims): &(&str, i32, Vec<Dim>)) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => DimensionValue::DimValue(*v),
                Dim::Param(p) => DimensionValue::DimParam((*p).to_owned()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: (*name).to_owned(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor { elem_type: *elem_type, shape: Some(TensorShapeProto { dim }) }),
        }),
        doc_string: String::new(),
    }
}
