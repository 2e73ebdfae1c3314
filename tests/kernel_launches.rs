//! Every CUDA kernel launch of the backend passes the arguments its kernel
//! declares: the same count, in the same order, of the same kinds (pointer,
//! int, unsigned, long long, float). A mismatch compiles on both sides and
//! only shows on a GPU as garbage or a crash, so it is checked here, from the
//! sources, on any machine: each `launch`/`launch_elementwise` call in
//! `src/backend/cuda/` against the `extern "C" __global__` signatures in
//! `kernels/`. Also: every kernel is launched somewhere (no dead kernels).

use std::collections::BTreeMap;
use std::path::Path;

/// The kinds of `Arg` in `src/backend/cuda/mod.rs`.
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

/// One launch site: where, which kernel names it may launch, the argument kinds.
struct Launch {
    site: String,
    kernels: Vec<String>,
    args: Vec<Kind>,
}

fn launches(dir: &Path, kernel_names: &[&String]) -> Vec<Launch> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let src = strip_comments(&std::fs::read_to_string(&path).unwrap());
        for pattern in ["self.launch_elementwise(", "self.launch("] {
            let mut from = 0;
            while let Some(at) = src[from..].find(pattern).map(|i| from + i) {
                from = at + pattern.len();
                let inner = parenthesised(&src, at + pattern.len() - 1);
                let first = inner.split(',').next().unwrap().trim();
                // `launch_elementwise` forwards to `launch` with its own arguments.
                if first == "name" {
                    continue;
                }
                let line = src[..at].lines().count();
                let site = format!("{}:{line}", path.file_name().unwrap().to_string_lossy());
                let kernels = if let Some(literal) = first.strip_prefix('"') {
                    vec![literal.trim_end_matches('"').to_string()]
                } else {
                    // A kernel chosen just before the launch (e.g. by the table's
                    // dtype): every kernel name quoted since the op's match arm began.
                    let mut above = Vec::new();
                    for l in src[..at].lines().rev().take(60) {
                        above.push(l);
                        if l.contains("Op::") {
                            break;
                        }
                    }
                    kernel_names
                        .iter()
                        .filter(|k| above.iter().any(|l| l.contains(&format!("\"{k}\""))))
                        .map(|k| k.to_string())
                        .collect()
                };
                assert!(!kernels.is_empty(), "{site}: cannot tell which kernel `{first}` launches");
                let args = inner
                    .match_indices("Arg::")
                    .map(|(i, _)| {
                        let variant: String =
                            inner[i + 5..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                        match variant.as_str() {
                            "Ptr" => Kind::Ptr,
                            "I32" => Kind::I32,
                            "U32" => Kind::U32,
                            "I64" => Kind::I64,
                            "F32" => Kind::F32,
                            other => panic!("{site}: unknown argument kind Arg::{other}"),
                        }
                    })
                    .collect();
                found.push(Launch { site, kernels, args });
            }
        }
    }
    found
}

#[test]
fn every_launch_passes_the_arguments_its_kernel_declares() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kernels = kernel_signatures(&root.join("kernels"));
    assert!(kernels.len() >= 20, "only {} kernels found: is the parser broken?", kernels.len());
    let names: Vec<&String> = kernels.keys().collect();
    let launches = launches(&root.join("src/backend/cuda"), &names);
    assert!(launches.len() >= 20, "only {} launch sites found: is the parser broken?", launches.len());

    let mut errors = Vec::new();
    let mut launched = std::collections::BTreeSet::new();
    for l in &launches {
        for k in &l.kernels {
            launched.insert(k.clone());
            match kernels.get(k) {
                None => errors.push(format!("{}: kernel {k} is not defined in kernels/*.cu", l.site)),
                Some(params) if *params != l.args => errors.push(format!(
                    "{}: {k} declares {} parameters {params:?}, the launch passes {} {:?}",
                    l.site,
                    params.len(),
                    l.args.len(),
                    l.args
                )),
                Some(_) => {}
            }
        }
    }
    for k in kernels.keys() {
        if !launched.contains(k) {
            errors.push(format!("kernel {k} is never launched by src/backend/cuda"));
        }
    }
    println!("{} kernels, {} launch sites checked", kernels.len(), launches.len());
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
    // A kernel with (ptr, int) and a launch passing (ptr, long long) differ.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("k.cu"),
        "// k\nextern \"C\" __global__ void __launch_bounds__(256) k(float* x, int n) {}\n",
    )
    .unwrap();
    let kernels = kernel_signatures(dir.path());
    assert_eq!(kernels["k"], vec![Kind::Ptr, Kind::I32]);
    let rs = dir.path().join("rs");
    std::fs::create_dir(&rs).unwrap();
    std::fs::write(rs.join("a.rs"), "fn f() { self.launch_elementwise(\"k\", n, &[Arg::Ptr(p), Arg::I64(n)])?; }\n")
        .unwrap();
    let names: Vec<&String> = kernels.keys().collect();
    let found = launches(&rs, &names);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kernels, vec!["k".to_string()]);
    assert_ne!(found[0].args, kernels["k"]);
}
