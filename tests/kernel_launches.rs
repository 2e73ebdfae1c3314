//! Every CUDA kernel is declared once in Rust, in `src/backend/cuda/kernels.rs`
//! (`kernels! { Type = "name" { param: Type, ... } }`), and launches build
//! that declaration's struct by field name, so a launch cannot pass arguments
//! in another order or of another type than the declaration. What remains is
//! that the declaration matches the kernel: the same count, in the same
//! order, of the same kinds (pointer, int, unsigned, long long, float). A
//! mismatch compiles on both sides and only shows on a GPU as garbage or a
//! crash, so it is checked here, from the sources, on any machine, against the
//! `extern "C" __global__` signatures in `kernels/`. Also: every kernel is
//! declared, and every declaration is launched somewhere (no dead kernels).

use std::collections::BTreeMap;
use std::path::Path;

/// The parameter kinds of a kernel (`kernels::Arg` in src/backend/cuda).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ptr,
    I32,
    U32,
    I64,
    F32,
}

/// The text inside the parentheses that open at `open` (balanced).
fn parenthesised(text: &str, open: usize) -> &str {
    assert_eq!(&text[open..open + 1], "(");
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses after byte {open}");
}

fn strip_comments(src: &str) -> String {
    src.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The kind of one kernel parameter, e.g. `const float* __restrict__ x` -> Ptr.
fn param_kind(param: &str) -> Result<Kind, String> {
    if param.contains('*') {
        return Ok(Kind::Ptr);
    }
    let mut words: Vec<&str> = param.split_whitespace().filter(|w| *w != "const").collect();
    words.pop(); // the parameter's name
    match words.join(" ").as_str() {
        "int" => Ok(Kind::I32),
        "unsigned" | "unsigned int" => Ok(Kind::U32),
        "long long" => Ok(Kind::I64),
        "float" => Ok(Kind::F32),
        other => Err(format!("parameter `{param}` has a type (`{other}`) this test does not know")),
    }
}

/// Kernel name -> parameter kinds, for every `__global__` function of `kernels/*.cu`.
fn kernel_signatures(dir: &Path) -> BTreeMap<String, Vec<Kind>> {
    let mut kernels = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "cu") {
            continue;
        }
        let src = strip_comments(&std::fs::read_to_string(&path).unwrap());
        let mut rest = src.as_str();
        while let Some(at) = rest.find("__global__") {
            rest = &rest[at + "__global__".len()..];
            let mut head = rest;
            if let Some(lb) = head.find("__launch_bounds__")
                && lb < head.find('{').unwrap_or(usize::MAX)
            {
                let open = lb + head[lb..].find('(').unwrap();
                let inner = parenthesised(head, open);
                head = &head[open + inner.len() + 2..];
            }
            let open = head.find('(').unwrap();
            let name = head[..open].split_whitespace().last().unwrap().to_string();
            let params = parenthesised(head, open);
            let kinds = params
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(param_kind)
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_else(|e| panic!("{}: kernel {name}: {e}", path.display()));
            assert!(kernels.insert(name.clone(), kinds).is_none(), "kernel {name} is defined twice");
        }
    }
    kernels
}

/// The text inside the braces that open at `open` (balanced).
fn braced(text: &str, open: usize) -> &str {
    assert_eq!(&text[open..open + 1], "{");
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces after byte {open}");
}

/// One declaration of `kernels!`: its Rust type, the kernel name, the parameter kinds.
struct Declaration {
    ty: String,
    kernel: String,
    params: Vec<Kind>,
}

/// The declarations of the `kernels! { .. }` invocation in `src`.
fn declarations(src: &str) -> Vec<Declaration> {
    let src = strip_comments(src);
    let at = src.find("kernels! {").expect("no `kernels! {` invocation");
    let block = braced(&src, at + "kernels! ".len());
    let mut found = Vec::new();
    let mut rest = block;
    while let Some(eq) = rest.find("= \"") {
        let ty = rest[..eq].split_whitespace().last().unwrap().to_string();
        let after = &rest[eq + 3..];
        let kernel = after[..after.find('"').unwrap()].to_string();
        let open = after.find('{').unwrap();
        let fields = braced(after, open);
        let params = fields
            .split(',')
            .filter(|f| !f.trim().is_empty())
            .map(|f| match f.split(':').nth(1).map(str::trim) {
                Some("Ptr") => Kind::Ptr,
                Some("i32") => Kind::I32,
                Some("u32") => Kind::U32,
                Some("i64") => Kind::I64,
                Some("f32") => Kind::F32,
                other => panic!("{ty}: field `{}` has a type ({other:?}) this test does not know", f.trim()),
            })
            .collect();
        found.push(Declaration { ty, kernel, params });
        rest = &after[open + fields.len() + 2..];
    }
    found
}

/// The `.rs` sources of `dir` (without `skip`), comments stripped, joined.
fn launch_sources(dir: &Path, skip: &str) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") || path.file_name().is_some_and(|n| n == skip) {
            continue;
        }
        all.push_str(&strip_comments(&std::fs::read_to_string(&path).unwrap()));
    }
    all
}

#[test]
fn every_kernel_declaration_matches_its_kernel_and_is_launched() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kernels = kernel_signatures(&root.join("kernels"));
    assert!(kernels.len() >= 20, "only {} kernels found: is the parser broken?", kernels.len());
    let decls = declarations(&std::fs::read_to_string(root.join("src/backend/cuda/kernels.rs")).unwrap());
    assert!(decls.len() >= 20, "only {} declarations found: is the parser broken?", decls.len());
    let launchers = launch_sources(&root.join("src/backend/cuda"), "kernels.rs");

    let mut errors = Vec::new();
    for d in &decls {
        match kernels.get(&d.kernel) {
            None => errors.push(format!("{}: kernel {} is not defined in kernels/*.cu", d.ty, d.kernel)),
            Some(params) if *params != d.params => errors.push(format!(
                "{}: {} declares {} parameters {params:?}, the Rust declaration has {} {:?}",
                d.ty,
                d.kernel,
                params.len(),
                d.params.len(),
                d.params
            )),
            Some(_) => {}
        }
        if !launchers.contains(&format!("k::{} {{", d.ty)) {
            errors.push(format!("{} ({}) is never launched by src/backend/cuda", d.ty, d.kernel));
        }
    }
    for k in kernels.keys() {
        if !decls.iter().any(|d| &d.kernel == k) {
            errors.push(format!("kernel {k} has no declaration in src/backend/cuda/kernels.rs"));
        }
    }
    println!("{} kernels, {} declarations checked", kernels.len(), decls.len());
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn the_checker_sees_a_wrong_argument_list() {
    assert_eq!(param_kind("const float* __restrict__ x"), Ok(Kind::Ptr));
    assert_eq!(param_kind("unsigned short* out"), Ok(Kind::Ptr));
    assert_eq!(param_kind("long long n"), Ok(Kind::I64));
    assert_eq!(param_kind("const int count"), Ok(Kind::I32));
    assert_eq!(param_kind("unsigned seed_lo"), Ok(Kind::U32));
    assert_eq!(param_kind("float scale"), Ok(Kind::F32));
    assert!(param_kind("double x").is_err());
    // A kernel with (ptr, int) and a declaration of (ptr, long long) differ.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("k.cu"),
        "// k\nextern \"C\" __global__ void __launch_bounds__(256) k(float* x, int n) {}\n",
    )
    .unwrap();
    let kernels = kernel_signatures(dir.path());
    assert_eq!(kernels["k"], vec![Kind::Ptr, Kind::I32]);
    let decls = declarations(
        "kernels! {\n    /// k.cu\n    K = \"k\" { x: Ptr, n: i64 }\n    L = \"l\" {\n        y: f32,\n    }\n}\n",
    );
    assert_eq!(decls.len(), 2);
    assert_eq!((decls[0].ty.as_str(), decls[0].kernel.as_str()), ("K", "k"));
    assert_eq!(decls[0].params, vec![Kind::Ptr, Kind::I64]);
    assert_ne!(decls[0].params, kernels["k"]);
    assert_eq!(decls[1].params, vec![Kind::F32]);
}
