//! The interface file, parsed and checked: what the emitter needs, or an error that names
//! the line and column and says what to do instead.

use std::collections::{BTreeMap, BTreeSet};

use proc_macro2::Span;
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{Attribute, FnArg, Ident, Item, ItemTrait, Pat, ReturnType, TraitItem, Type};

use crate::hash::{fnv1a32, fnv1a64};

/// A problem found at a place in the interface file.
#[derive(Debug)]
pub(crate) struct Problem {
    pub(crate) span: Span,
    pub(crate) message: String,
    pub(crate) help: Option<String>,
}

fn problem(span: Span, message: impl Into<String>, help: impl Into<String>) -> Problem {
    Problem { span, message: message.into(), help: Some(help.into()) }
}

/// How a method is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Request and response over the reliable transport.
    Call,
    /// No result; also sendable best-effort over UDP.
    OneWay,
    /// No result; also sendable to a multicast group (and unicast one-way).
    Multicast,
}

impl Kind {
    pub(crate) fn is_one_way(self) -> bool {
        self != Kind::Call
    }
}

#[derive(Debug)]
pub(crate) struct Arg {
    pub(crate) name: Ident,
    pub(crate) ty: Type,
}

#[derive(Debug)]
pub(crate) struct Method {
    pub(crate) name: Ident,
    pub(crate) docs: Vec<Attribute>,
    pub(crate) args: Vec<Arg>,
    /// `None` for `()`.
    pub(crate) ret: Option<Type>,
    pub(crate) kind: Kind,
    pub(crate) idempotent: bool,
    /// Index into `args` of the `#[key]` argument.
    pub(crate) key: Option<usize>,
    pub(crate) id: u32,
}

#[derive(Debug)]
pub(crate) struct Interface {
    pub(crate) name: Ident,
    pub(crate) docs: Vec<Attribute>,
    /// Everything in the file but the trait (uses, types, impls), copied to the output.
    pub(crate) items: Vec<Item>,
    pub(crate) methods: Vec<Method>,
    pub(crate) interface_id: u32,
    pub(crate) fingerprint: u64,
}

/// Names the generated code defines on every stub; methods cannot take them.
const RESERVED: &[&str] =
    &["new", "from_client", "client", "with_options", "check_interface", "with_sender", "redirector", "with_config"];
const RESERVED_PREFIX: &str = "set_";

pub(crate) fn parse(file: syn::File) -> Result<Interface, Problem> {
    let mut items = Vec::new();
    let mut service: Option<ItemTrait> = None;
    for item in file.items {
        match item {
            Item::Trait(t) => {
                if let Some(first) = &service {
                    return Err(problem(
                        t.ident.span(),
                        format!(
                            "a second trait `{}` in the interface file (the service is `{}`)",
                            t.ident, first.ident
                        ),
                        "put one service per interface file",
                    ));
                }
                service = Some(t);
            }
            Item::Use(_)
            | Item::Struct(_)
            | Item::Enum(_)
            | Item::Type(_)
            | Item::Const(_)
            | Item::Impl(_)
            | Item::Union(_) => items.push(item),
            other => {
                return Err(problem(
                    other.span(),
                    "only `use` items, type definitions, their impls and the service trait belong in an interface file",
                    "move other code into the crate that includes the generated stubs",
                ))
            }
        }
    }
    let Some(service) = service else {
        return Err(problem(
            Span::call_site(),
            "no service trait in the interface file",
            "declare the service as `pub trait Name { async fn method(&self, arg: T) -> R; }`",
        ));
    };
    check_trait_shape(&service)?;
    let local_types = local_type_defs(&items);
    let service_name = service.ident.to_string();
    let mut methods: Vec<Method> = Vec::new();
    let mut arg_structs: BTreeMap<String, String> = BTreeMap::new();
    for item in &service.items {
        let TraitItem::Fn(f) = item else {
            return Err(problem(
                item.span(),
                "a service trait holds only methods",
                "move constants and types out of the trait, next to it in the interface file",
            ));
        };
        let m = parse_method(f, &service_name, &local_types)?;
        if let Some(prev) = methods.iter().find(|p| p.name == m.name) {
            return Err(problem(
                m.name.span(),
                format!("duplicate method `{}` (first declared at line {})", m.name, prev.name.span().start().line),
                "give each method its own name; overloading is not supported",
            ));
        }
        if let Some(prev) = methods.iter().find(|p| p.id == m.id) {
            return Err(problem(
                m.name.span(),
                format!("method id {:#010x} of `{}` collides with `{}`", m.id, m.name, prev.name),
                "rename one of the two methods (ids are hashes of the names and signatures)",
            ));
        }
        let args_struct = crate::emit::args_struct_name(&m.name);
        if local_types.contains_key(&args_struct) {
            return Err(problem(
                m.name.span(),
                format!("the generated argument type `{args_struct}` of `{}` clashes with a type in this file", m.name),
                format!("rename the type `{args_struct}`"),
            ));
        }
        if let Some(other) = arg_structs.insert(args_struct.clone(), m.name.to_string()) {
            return Err(problem(
                m.name.span(),
                format!("methods `{other}` and `{}` would both get the argument type `{args_struct}`", m.name),
                "rename one of them",
            ));
        }
        methods.push(m);
    }
    let interface_id = fnv1a32(format!("{service_name}.__interface").as_bytes());
    if let Some(m) = methods.iter().find(|m| m.id == interface_id) {
        return Err(problem(
            m.name.span(),
            format!("method `{}` collides with the built-in interface method", m.name),
            "rename it",
        ));
    }
    let mut fp = String::from(&service_name);
    for m in &methods {
        fp.push_str(&format!(";{}={:08x}", m.name, m.id));
    }
    Ok(Interface {
        name: service.ident.clone(),
        docs: docs(&service.attrs),
        items,
        methods,
        interface_id,
        fingerprint: fnv1a64(fp.as_bytes()),
    })
}

fn check_trait_shape(t: &ItemTrait) -> Result<(), Problem> {
    if !t.generics.params.is_empty() || t.generics.where_clause.is_some() {
        return Err(problem(
            t.generics.span(),
            format!("service trait `{}` is generic", t.ident),
            "services are concrete: name the argument types in each method",
        ));
    }
    if let Some(s) = t.supertraits.first() {
        return Err(problem(s.span(), "service traits have no supertraits", "remove the bound"));
    }
    if let Some(a) = t.attrs.iter().find(|a| !a.path().is_ident("doc") && !a.path().is_ident("service")) {
        return Err(problem(
            a.span(),
            "unknown attribute on the service trait",
            "only doc comments and `#[service]` are allowed here",
        ));
    }
    Ok(())
}

fn docs(attrs: &[Attribute]) -> Vec<Attribute> {
    attrs.iter().filter(|a| a.path().is_ident("doc")).cloned().collect()
}

/// Canonical text of every struct/enum/type alias in the file, by name (docs removed).
fn local_type_defs(items: &[Item]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for item in items {
        let (name, mut item) = match item {
            Item::Struct(s) => (s.ident.to_string(), item.clone()),
            Item::Enum(e) => (e.ident.to_string(), item.clone()),
            Item::Type(t) => (t.ident.to_string(), item.clone()),
            Item::Union(u) => (u.ident.to_string(), item.clone()),
            _ => continue,
        };
        strip_docs(&mut item);
        out.insert(name, item.to_token_stream().to_string());
    }
    out
}

fn strip_docs(item: &mut Item) {
    use syn::visit_mut::VisitMut;
    struct Strip;
    impl VisitMut for Strip {
        fn visit_attributes_mut(&mut self, attrs: &mut Vec<Attribute>) {
            attrs.retain(|a| !a.path().is_ident("doc"));
        }
        fn visit_field_mut(&mut self, f: &mut syn::Field) {
            f.attrs.retain(|a| !a.path().is_ident("doc"));
            syn::visit_mut::visit_field_mut(self, f);
        }
        fn visit_variant_mut(&mut self, v: &mut syn::Variant) {
            v.attrs.retain(|a| !a.path().is_ident("doc"));
            syn::visit_mut::visit_variant_mut(self, v);
        }
    }
    match item {
        Item::Struct(s) => {
            s.attrs.retain(|a| !a.path().is_ident("doc"));
            Strip.visit_item_struct_mut(s);
        }
        Item::Enum(e) => {
            e.attrs.retain(|a| !a.path().is_ident("doc"));
            Strip.visit_item_enum_mut(e);
        }
        Item::Type(t) => t.attrs.retain(|a| !a.path().is_ident("doc")),
        Item::Union(u) => {
            u.attrs.retain(|a| !a.path().is_ident("doc"));
            Strip.visit_item_union_mut(u);
        }
        _ => {}
    }
}

/// The signature text a method's id covers: argument and return types, how it is called,
/// and the definitions of this file's types it uses (transitively), so any change to what
/// travels changes the id.
fn signature(args: &[Arg], ret: &Option<Type>, kind: Kind, local: &BTreeMap<String, String>) -> String {
    let mut sig = String::new();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = Vec::new();
    for a in args {
        sig.push_str(&a.ty.to_token_stream().to_string());
        sig.push(',');
        idents_in(&a.ty.to_token_stream(), &mut todo);
    }
    sig.push_str("->");
    if let Some(r) = ret {
        sig.push_str(&r.to_token_stream().to_string());
        idents_in(&r.to_token_stream(), &mut todo);
    }
    sig.push_str(match kind {
        Kind::Call => "|call",
        Kind::OneWay => "|oneway",
        Kind::Multicast => "|multicast",
    });
    while let Some(name) = todo.pop() {
        if let Some(def) = local.get(&name) {
            if seen.insert(name) {
                let tokens: proc_macro2::TokenStream = def.parse().unwrap_or_default();
                idents_in(&tokens, &mut todo);
            }
        }
    }
    for name in seen {
        sig.push('|');
        sig.push_str(&local[&name]);
    }
    sig
}

fn idents_in(tokens: &proc_macro2::TokenStream, out: &mut Vec<String>) {
    for t in tokens.clone() {
        match t {
            proc_macro2::TokenTree::Ident(i) => out.push(i.to_string()),
            proc_macro2::TokenTree::Group(g) => idents_in(&g.stream(), out),
            _ => {}
        }
    }
}

fn parse_method(f: &syn::TraitItemFn, service: &str, local: &BTreeMap<String, String>) -> Result<Method, Problem> {
    let sig = &f.sig;
    let name = sig.ident.clone();
    if sig.asyncness.is_none() {
        return Err(problem(sig.fn_token.span(), format!("method `{name}` is not `async`"), "declare it `async fn`"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(problem(
            sig.generics.span(),
            format!("method `{name}` is generic"),
            "name concrete argument types: a generic cannot be given a wire format",
        ));
    }
    if let Some(d) = &f.default {
        return Err(problem(d.span(), format!("method `{name}` has a body"), "end the declaration with `;`"));
    }
    if sig.unsafety.is_some() || sig.abi.is_some() || sig.constness.is_some() || sig.variadic.is_some() {
        return Err(problem(
            sig.span(),
            format!("method `{name}` has qualifiers a service method cannot have"),
            "write `async fn`",
        ));
    }
    let n = name.to_string();
    if RESERVED.contains(&n.as_str()) || n.starts_with(RESERVED_PREFIX) || n.starts_with("__") {
        return Err(problem(
            name.span(),
            format!("method name `{n}` is reserved by the generated stubs"),
            "choose another name",
        ));
    }
    let mut kind = Kind::Call;
    let mut idempotent = false;
    for a in &f.attrs {
        let p = a.path();
        if p.is_ident("doc") {
        } else if p.is_ident("oneway") && matches!(a.meta, syn::Meta::Path(_)) {
            kind = if kind == Kind::Multicast { Kind::Multicast } else { Kind::OneWay };
        } else if p.is_ident("multicast") && matches!(a.meta, syn::Meta::Path(_)) {
            kind = Kind::Multicast;
        } else if p.is_ident("idempotent") && matches!(a.meta, syn::Meta::Path(_)) {
            idempotent = true;
        } else {
            return Err(problem(
                a.span(),
                format!("unknown attribute on method `{name}`"),
                "use `#[oneway]`, `#[multicast]`, `#[idempotent]` or doc comments",
            ));
        }
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none() => {}
        Some(other) => {
            return Err(problem(
                other.span(),
                format!("method `{name}` must take `&self` first"),
                "write `&self` as the receiver",
            ))
        }
        None => {
            return Err(problem(
                sig.paren_token.span.join(),
                format!("method `{name}` must take `&self` first"),
                "write `&self` as the receiver",
            ))
        }
    }
    let mut args = Vec::new();
    let mut key = None;
    for input in inputs {
        let FnArg::Typed(pt) = input else {
            return Err(problem(input.span(), "a second receiver", "remove it"));
        };
        let Pat::Ident(pi) = &*pt.pat else {
            return Err(problem(
                pt.pat.span(),
                "argument patterns are not supported",
                "name the argument: `name: Type`",
            ));
        };
        if pi.by_ref.is_some() || pi.subpat.is_some() {
            return Err(problem(
                pt.pat.span(),
                "argument patterns are not supported",
                "name the argument: `name: Type`",
            ));
        }
        for a in &pt.attrs {
            if a.path().is_ident("key") && matches!(a.meta, syn::Meta::Path(_)) {
                if key.is_some() {
                    return Err(problem(
                        a.span(),
                        format!("method `{name}` has two `#[key]` arguments"),
                        "mark at most one argument as the key",
                    ));
                }
                key = Some(args.len());
            } else {
                return Err(problem(
                    a.span(),
                    "unknown attribute on an argument",
                    "only `#[key]` is allowed on arguments",
                ));
            }
        }
        if pi.ident.to_string().starts_with("__") {
            return Err(problem(
                pi.ident.span(),
                format!("argument name `{}` is reserved: the generated stubs use the `__` prefix", pi.ident),
                "rename it",
            ));
        }
        check_wire_type(&pt.ty, &format!("argument `{}` of `{name}`", pi.ident))?;
        if args.iter().any(|a: &Arg| a.name == pi.ident) {
            return Err(problem(pi.ident.span(), format!("duplicate argument `{}`", pi.ident), "rename it"));
        }
        args.push(Arg { name: pi.ident.clone(), ty: (*pt.ty).clone() });
    }
    let ret = match &sig.output {
        ReturnType::Default => None,
        ReturnType::Type(_, t) if matches!(&**t, Type::Tuple(tt) if tt.elems.is_empty()) => None,
        ReturnType::Type(_, t) => Some((**t).clone()),
    };
    if kind.is_one_way() {
        if let (ReturnType::Type(arrow, t), Some(_)) = (&sig.output, &ret) {
            return Err(problem(
                arrow.span().join(t.span()).unwrap_or_else(|| t.span()),
                format!("one-way method `{name}` returns a value"),
                "remove the return type, or remove `#[oneway]`/`#[multicast]` to make it a call",
            ));
        }
    }
    if let Some(t) = &ret {
        check_wire_type(t, &format!("the return type of `{name}`"))?;
    }
    let id = fnv1a32(format!("{service}.{n}#{}", signature(&args, &ret, kind, local)).as_bytes());
    if id == 0 {
        return Err(problem(name.span(), format!("method `{n}` hashes to the reserved id 0"), "rename it"));
    }
    Ok(Method { name, docs: docs(&f.attrs), args, ret, kind, idempotent, key, id })
}

/// Types that can travel: owned, archivable. References, trait objects, `impl Trait`,
/// pointers and function types cannot.
fn check_wire_type(ty: &Type, what: &str) -> Result<(), Problem> {
    struct Check<'a> {
        found: Option<Problem>,
        what: &'a str,
    }
    impl<'ast> Visit<'ast> for Check<'_> {
        fn visit_type(&mut self, t: &'ast Type) {
            if self.found.is_some() {
                return;
            }
            let bad = match t {
                Type::Reference(r) => Some((
                    format!(
                        "{} is a reference (`{}`), which cannot be archived",
                        self.what,
                        t.to_token_stream().to_string().replace("& ", "&")
                    ),
                    format!("take an owned type instead, e.g. `{}`", owned_hint(&r.elem)),
                )),
                Type::ImplTrait(_) | Type::TraitObject(_) => Some((
                    format!("{} is a trait type, which has no wire format", self.what),
                    "name a concrete type".to_owned(),
                )),
                Type::Ptr(_) | Type::BareFn(_) | Type::Never(_) | Type::Infer(_) | Type::Macro(_) => Some((
                    format!("{} (`{}`) cannot travel in a message", self.what, t.to_token_stream()),
                    "use an owned data type that derives rkyv's Archive and Serialize".to_owned(),
                )),
                _ => None,
            };
            match bad {
                Some((message, help)) => self.found = Some(problem(t.span(), message, help)),
                None => syn::visit::visit_type(self, t),
            }
        }
    }
    let mut c = Check { found: None, what };
    c.visit_type(ty);
    c.found.map_or(Ok(()), Err)
}

fn owned_hint(elem: &Type) -> String {
    match elem {
        Type::Path(p) if p.path.is_ident("str") => "String".into(),
        Type::Slice(s) => format!("Vec<{}>", s.elem.to_token_stream()),
        other => other.to_token_stream().to_string(),
    }
}
