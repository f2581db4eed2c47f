// Package onnx reads and writes decoder language models in the ONNX format: Export writes an
// engine model as an ONNX decoder graph with KV-cache inputs and outputs in Hugging Face
// optimum's convention, and Import reads such a file back into a config and HF-named weights.
//
// The exported graph (opset 17, standard ops only) has
//
//	inputs:  input_ids                 int64   [batch_size, sequence_length]
//	         attention_mask            int64   [batch_size, total_sequence_length]
//	         position_ids              int64   [batch_size, sequence_length]
//	         past_key_values.{i}.key   float32 [batch_size, num_key_value_heads, past_sequence_length, head_dim]
//	         past_key_values.{i}.value float32 (same)
//	outputs: logits                    float32 [batch_size, sequence_length, vocab_size]
//	         present.{i}.key           float32 [batch_size, num_key_value_heads, total_sequence_length, head_dim]
//	         present.{i}.value         float32 (same)
//
// where total_sequence_length = past_sequence_length + sequence_length. The first call takes
// empty past tensors (past_sequence_length 0); later calls feed the present tensors back.
//
// Weights are graph initializers under their Hugging Face names, in the Hugging Face layout
// (linear weights [out, in]); every linear layer is a Gemm node with transB=1 on the flattened
// hidden states [batch*seq, hidden], so no transposed copies exist and import is a plain lookup.
// The RoPE inverse frequencies are a Constant node (computed from the config, rope scaling
// included), cos/sin are computed in the graph from position_ids. The engine config is stored
// as JSON in the model's metadata_props under the key "prolong.config".
//
// Import reads such a file back, and also the decoders other tools write: torch.onnx.export /
// Hugging Face optimum files (named or anonymous transposed weights, with or without
// past_key_values) and onnxruntime-genai builder files (fused qkv_proj, GroupQueryAttention);
// see Import.
package onnx
