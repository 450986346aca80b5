use calico_model::gguf::GgufFile;
use candle_core::{Device, Tensor};
use std::sync::Arc;
use std::time::Instant;
#[test]
fn scratch() {
    let dev = Device::Cpu;
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
    );
    let mut f = GgufFile::open(p).unwrap();
    let q = Arc::new(f.read("token_embd.weight", &dev).unwrap());
    let t = calico_nn::QuantizedTable::new(q.clone()).unwrap();
    let w = q.dequantize(&dev).unwrap();
    let h = Tensor::randn(0f32, 1.0, (1, 1, 576), &dev).unwrap();
    for _ in 0..3 {
        let s = Instant::now();
        let _ = q.dequantize(&dev).unwrap();
        let d = s.elapsed();
        let s = Instant::now();
        let _ = calico_nn::Linear::from_tensors(w.clone(), None)
            .forward(&h)
            .unwrap();
        let m = s.elapsed();
        let s = Instant::now();
        let _ = t.forward(&h).unwrap();
        let tf = s.elapsed();
        println!("dequant {:?} matmul {:?} table {:?}", d, m, tf);
    }
}
