//! ONNX protobuf pieces for the model tests.

use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{
    tensor_shape_proto, type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// A graph input or output: name, element type and fixed dims.
pub(crate) fn value_info(name: &str, elem: DataType, dims: &[usize]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A model of one node (default ONNX domain, opset 17).
pub(crate) fn one_node_model(
    node: NodeProto,
    inputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
    output: ValueInfoProto,
) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "g".into(),
            node: vec![node],
            initializer: inits,
            input: inputs,
            output: vec![output],
            ..Default::default()
        }),
        ..Default::default()
    }
}
