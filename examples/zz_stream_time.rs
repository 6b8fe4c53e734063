use conformal_gpu::backend::CpuBackend;
use conformal_gpu::data::stream::NpzRowReader;
use conformal_gpu::methods::calibration::Calibration;
use conformal_gpu::methods::files::{tally_files, FileJob};
use std::time::Instant;
fn main() {
    let p = std::env::args().nth(1).unwrap();
    let t = Instant::now();
    let text = std::fs::read_to_string("/tmp/cal.json").unwrap();
    let cal = Calibration::from_json(&text, "cal").unwrap();
    println!("cal {:?}", t.elapsed());
    for _ in 0..3 {
        let t = Instant::now();
        let r = NpzRowReader::open(std::path::Path::new(&p)).unwrap();
        let d = tally_files(
            &CpuBackend,
            &cal,
            vec![FileJob {
                reader: r,
                name: "x".into(),
                rows: None,
            }],
            1 << 20,
            false,
        )
        .unwrap();
        println!("tally {:?} {}", t.elapsed(), d[0].tally.n());
    }
}
