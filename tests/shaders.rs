//! Every shader parses and validates with naga (no GPU needed).

use conformal_gpu::shaders::{source, NAMES};

#[test]
fn every_shader_validates_with_naga() {
    assert!(!NAMES.is_empty());
    for name in NAMES {
        let src = source(name).expect("registered shader has a source");
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{name}.wgsl does not parse:\n{}", e.emit_to_string(&src)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}.wgsl does not validate: {e:?}"));
        assert!(
            module.entry_points.iter().any(|e| e.name == "main"),
            "{name}.wgsl has no entry point `main`"
        );
    }
}

#[test]
fn every_shader_file_is_registered() {
    // A .wgsl file that is not in SHADERS would never be validated or compiled; the
    // helper files are validated inside every shader they are composed into.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        if path.extension().is_some_and(|e| e == "wgsl")
            && ![
                "common",
                "row_summary",
                "row_summary_lanes",
                "class_sum",
                "word_sums",
                "grid_sums",
            ]
            .contains(&stem.as_str())
        {
            assert!(
                NAMES.contains(&stem.as_str()),
                "shaders/{stem}.wgsl is not in SHADERS"
            );
        }
    }
}

/// The shared row summary is composed into the shaders that call it, and only those.
#[test]
fn row_summary_is_composed_where_it_is_called() {
    for name in NAMES {
        let src = conformal_gpu::shaders::source(name).unwrap();
        let body_calls = src.matches("row_summary(row").count() > 0;
        let has_fn = src.contains("fn row_summary(");
        assert_eq!(body_calls, has_fn, "{name}");
    }
    assert!(conformal_gpu::shaders::source("tally")
        .unwrap()
        .contains("fn row_summary("));
    // Its team-of-lanes form, likewise (only the tally runs it).
    for name in NAMES {
        let src = conformal_gpu::shaders::source(name).unwrap();
        let calls = src.matches("row_summary_lanes(row").count() > 0;
        assert_eq!(calls, src.contains("fn row_summary_lanes("), "{name}");
        assert_eq!(calls, name == "tally", "{name}");
    }
}

/// The order-invariant class sums (class_sum.wgsl) are composed into every shader that
/// calls them and only those; every shader that takes a softmax (computes `exp(`) of a
/// row sums through them, except temperature_nll (its f32 partials feed the temperature
/// fit, not a tie: see src/kernel/class_sum.rs).
#[test]
fn class_sum_is_composed_where_it_is_called() {
    let helpers = conformal_gpu::shaders::CLASS_SUM;
    for name in NAMES {
        let src = source(name).unwrap();
        let body = src.replace(helpers, "");
        let calls = [
            "class_sum_add(",
            "class_neg_sum_add(",
            "p1_grid(",
            "grid_to_f32(",
        ]
        .iter()
        .any(|f| body.contains(f));
        let has = src.contains("fn class_sum_add(");
        assert_eq!(calls, has, "{name}");
        if body.contains("exp(") && name != "temperature_nll" {
            assert!(
                body.contains("class_sum_add("),
                "{name} sums classes in order"
            );
        }
    }
    for name in [
        "softmax",
        "calibration",
        "pvalues",
        "lac_scores",
        "row_stats",
        "tally",
    ] {
        assert!(
            source(name).unwrap().contains("fn class_sum_add("),
            "{name}"
        );
    }
}
