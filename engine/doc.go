// Package engine runs decoder-only language models of the Llama / Qwen2 / Qwen3 family:
// configuration, tensors on a Backend, the decoder forward pass over ragged batches, a paged
// KV cache with prefix sharing, sampling, batched generation and scoring.
//
// The engine is not a general graph interpreter: the model is a fixed, fused decoder, as in
// llm.c and llama.cpp. Backends (the CPU backend in package engine/cpu, CUDA in package cuda)
// implement the handful of fused ops it needs and register themselves with RegisterBackend;
// package engine imports none of them.
package engine
