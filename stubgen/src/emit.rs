//! Writing the stubs: the interface's own items, wire constants, argument types, the server
//! trait and its service builder, and the client, one-way, multicast and redirector stubs.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::Ident;

use crate::model::{Interface, Kind, Method};

/// `add_user` → `AddUserArgs`.
pub(crate) fn args_struct_name(method: &Ident) -> String {
    let mut out = String::new();
    let mut upper = true;
    for c in method.to_string().trim_start_matches("r#").chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out.push_str("Args");
    out
}

fn hex(id: u32) -> syn::LitInt {
    syn::LitInt::new(&format!("{id:#010x}"), Span::call_site())
}

fn const_name(method: &Ident) -> Ident {
    Ident::new(&method.to_string().trim_start_matches("r#").to_uppercase(), Span::call_site())
}

/// What to generate besides the stubs every interface gets.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Options {
    /// serde derives on the interface's types, and `json_methods` / `call_json`.
    pub(crate) json: bool,
}

pub(crate) fn emit(iface: &Interface, options: Options) -> TokenStream {
    let rpc = quote!(::multispace_rpc);
    let name = &iface.name;
    let service_name = name.to_string();
    let items: Vec<syn::Item> =
        if options.json { iface.items.iter().cloned().map(with_serde).collect() } else { iface.items.clone() };
    let docs = &iface.docs;
    let fingerprint = syn::LitInt::new(&format!("{:#018x}", iface.fingerprint), Span::call_site());
    let interface_id = hex(iface.interface_id);
    let methods = &iface.methods;

    let id_consts = methods.iter().map(|m| {
        let c = const_name(&m.name);
        let id = hex(m.id);
        // The constants live in `mod method_id`, one level below the trait.
        let doc = format!(" Wire id of [`{0}::{1}`](super::{0}::{1}).", name, m.name);
        quote!(#[doc = #doc] pub const #c: u32 = #id;)
    });
    let method_infos = methods.iter().map(|m| {
        let n = m.name.to_string();
        let c = const_name(&m.name);
        quote!(#rpc::stub::MethodInfo { name: #n.to_owned(), id: method_id::#c })
    });

    let method_names: Vec<_> = methods
        .iter()
        .map(|m| {
            let (n, c) = (m.name.to_string(), const_name(&m.name));
            quote!((method_id::#c, #n))
        })
        .collect();

    let arg_structs = methods.iter().map(|m| {
        let s = format_ident!("{}", args_struct_name(&m.name));
        let fields = m.args.iter().map(|a| {
            let (n, t) = (&a.name, &a.ty);
            quote!(pub #n: #t)
        });
        let doc = format!(" The arguments of [`{}::{}`] as they travel.", name, m.name);
        quote! {
            #[doc = #doc]
            // Argument types need not be Debug, so neither is this.
            #[allow(missing_debug_implementations)]
            #[derive(#rpc::rkyv::Archive, #rpc::rkyv::Serialize)]
            #[rkyv(crate = #rpc::rkyv)]
            pub struct #s { #(#fields,)* }
        }
    });

    // The server side.
    let trait_methods = methods.iter().map(|m| {
        let n = &m.name;
        let d = method_attrs(m);
        let args = m.args.iter().map(|a| {
            let (n, t) = (&a.name, &a.ty);
            quote!(#n: &#rpc::rkyv::Archived<#t>)
        });
        let ret = if m.kind.is_one_way() {
            quote!()
        } else {
            let r = m.ret.as_ref().map_or(quote!(()), |t| quote!(#t));
            quote!(-> ::std::result::Result<#r, #rpc::Status>)
        };
        quote!(#d async fn #n(&self, ctx: &#rpc::CallContext, #(#args),*) #ret;)
    });
    let registrations = methods.iter().map(|m| {
        let n = &m.name;
        let c = const_name(n);
        let s = format_ident!("{}", args_struct_name(n));
        let fields = m.args.iter().map(|a| {
            let f = &a.name;
            quote!(&req.#f)
        });
        let register = if m.kind.is_one_way() { quote!(one_way) } else { quote!(method) };
        let req = if m.args.is_empty() { quote!(_req) } else { quote!(req) };
        quote! {
            .#register(method_id::#c, {
                let imp = imp.clone();
                move |ctx: #rpc::CallContext, #req: #rpc::Message<#s>| {
                    let imp = imp.clone();
                    async move { imp.#n(&ctx, #(#fields),*).await }
                }
            })
        }
    });

    // Client-side method bodies, shared by every stub: (signature, args struct literal).
    let sig_and_args = |m: &Method| {
        let params = m.args.iter().map(|a| {
            let (n, t) = (&a.name, &a.ty);
            quote!(#n: #t)
        });
        let names = m.args.iter().map(|a| &a.name);
        let s = format_ident!("{}", args_struct_name(&m.name));
        (quote!(#(#params),*), quote!(#s { #(#names),* }), s)
    };
    let ret_ty = |m: &Method| m.ret.as_ref().map_or(quote!(()), |t| quote!(#t));

    let client_name = format_ident!("{}Client", name);
    let client_methods = methods.iter().map(|m| {
        let n = &m.name;
        let d = method_attrs(m);
        let c = const_name(n);
        let (params, args, s) = sig_and_args(m);
        let r = ret_ty(m);
        if m.kind.is_one_way() {
            // Acknowledged, and also sent without asking for an answer (`_unacked`).
            let unacked = format_ident!("{}_unacked", n.to_string().trim_start_matches("r#"));
            quote! {
                #d
                pub async fn #n(&self, #params) -> ::std::result::Result<(), #rpc::CallError> {
                    self.client.call::<#s, ()>(method_id::#c, &#args, self.options).await.map(drop)
                }
                #[doc = " The same one-way call with no acknowledgement: queued in order on the reliable"]
                #[doc = " connection (`Ok` once queued on a live one), so the server sends no answer."]
                pub async fn #unacked(&self, #params) -> ::std::result::Result<(), #rpc::CallError> {
                    self.client.one_way::<#s>(method_id::#c, &#args).await
                }
            }
        } else if m.ret.is_none() {
            quote! {
                #d
                pub async fn #n(&self, #params) -> ::std::result::Result<(), #rpc::CallError> {
                    self.client.call::<#s, ()>(method_id::#c, &#args, self.options).await.map(drop)
                }
            }
        } else {
            quote! {
                #d
                pub async fn #n(&self, #params) -> ::std::result::Result<#rpc::Message<#r>, #rpc::CallError> {
                    self.client.call::<#s, #r>(method_id::#c, &#args, self.options).await
                }
            }
        }
    });

    let one_way: Vec<&Method> = methods.iter().filter(|m| m.kind.is_one_way()).collect();
    let multicast: Vec<&Method> = methods.iter().filter(|m| m.kind == Kind::Multicast).collect();
    let one_way_stub = (!one_way.is_empty()).then(|| {
        let stub = format_ident!("{}OneWay", name);
        let doc = format!(" Best-effort one-way calls to one `{service_name}` instance over UDP: no reply, no retry.");
        let fns = one_way.iter().map(|m| {
            let n = &m.name;
            let d = method_attrs(m);
            let c = const_name(n);
            let (params, args, _) = sig_and_args(m);
            quote! {
                #d
                pub async fn #n(&self, #params) -> ::std::result::Result<(), #rpc::SendError> {
                    self.sender.send(self.to, method_id::#c, &#args).await
                }
            }
        });
        quote! {
            #[doc = #doc]
            #[derive(Debug, Clone)]
            pub struct #stub {
                sender: ::std::rc::Rc<#rpc::OneWaySender>,
                to: ::std::net::SocketAddr,
            }
            impl #stub {
                /// Send to `to` from a new sender bound to an ephemeral loopback port.
                pub fn new(to: ::std::net::SocketAddr) -> ::std::io::Result<Self> {
                    Ok(Self::with_sender(::std::rc::Rc::new(#rpc::OneWaySender::new()?), to))
                }
                /// Send to `to` through `sender` (shared by many stubs).
                pub fn with_sender(sender: ::std::rc::Rc<#rpc::OneWaySender>, to: ::std::net::SocketAddr) -> Self {
                    Self { sender, to }
                }
                #(#fns)*
            }
        }
    });
    let multicast_stub = (!multicast.is_empty()).then(|| {
        let stub = format_ident!("{}Multicast", name);
        let doc = format!(" Best-effort one-way calls to every member of a multicast group serving `{service_name}`.");
        let fns = multicast.iter().map(|m| {
            let n = &m.name;
            let d = method_attrs(m);
            let c = const_name(n);
            let (params, args, _) = sig_and_args(m);
            quote! {
                #d
                pub async fn #n(&self, #params) -> ::std::result::Result<(), #rpc::SendError> {
                    self.sender.send_group(&self.group, method_id::#c, &#args).await
                }
            }
        });
        quote! {
            #[doc = #doc]
            #[derive(Debug, Clone)]
            pub struct #stub {
                sender: ::std::rc::Rc<#rpc::OneWaySender>,
                group: #rpc::MulticastGroup,
            }
            impl #stub {
                /// A stub sending to `group` (on its interface, with its TTL).
                pub fn new(group: #rpc::MulticastGroup) -> ::std::io::Result<Self> {
                    Ok(Self::with_sender(::std::rc::Rc::new(#rpc::OneWaySender::multicast(&group)?), group))
                }
                /// A stub sending through `sender`, which must have been made for `group`.
                pub fn with_sender(sender: ::std::rc::Rc<#rpc::OneWaySender>, group: #rpc::MulticastGroup) -> Self {
                    Self { sender, group }
                }
                #(#fns)*
            }
        }
    });

    let redirector_name = format_ident!("{}Redirector", name);
    let redirector_methods = methods.iter().map(|m| {
        let n = &m.name;
        let d = method_attrs(m);
        let c = const_name(n);
        let (params, args, s) = sig_and_args(m);
        let r = ret_ty(m);
        let idempotent = m.idempotent;
        let key = match m.key {
            Some(i) => {
                let k = &m.args[i].name;
                quote!(let __affinity = ::std::option::Option::Some(#rpc::key_hash(&#k));)
            }
            None => quote!(let __affinity = ::std::option::Option::None;),
        };
        let call = quote!(self.redirector.call::<#s, #r>(method_id::#c, #idempotent, __affinity, &#args).await);
        if m.ret.is_none() {
            quote! {
                #d
                pub async fn #n(&self, #params) -> ::std::result::Result<(), #rpc::RedirectError> {
                    #key
                    #call.map(drop)
                }
            }
        } else {
            quote! {
                #d
                pub async fn #n(&self, #params) -> ::std::result::Result<#rpc::Message<#r>, #rpc::RedirectError> {
                    #key
                    #call
                }
            }
        }
    });

    let client_doc = format!(" Typed reliable calls to one `{service_name}` instance (TCP; many calls in flight).");
    let redirector_doc = format!(
        " Typed calls to any of many `{service_name}` instances: each call goes to the instance the policy picks, and a \
         failed call is repeated on another instance only when that is safe (it did not run, or the method is idempotent)."
    );
    let service_fn_doc = format!(
        " The `{service_name}` service served by `imp`: serve it with `multispace_rpc::Server` (calls) and \
         `multispace_rpc::OneWayServer` (one-way and multicast calls)."
    );

    let json = options.json.then(|| emit_json(iface));

    quote! {
        #(#items)*

        /// The service's name.
        pub const SERVICE: &str = #service_name;
        /// A hash over every method's name and wire id: equal on both sides when both were
        /// built from the same interface.
        pub const FINGERPRINT: u64 = #fingerprint;

        /// Wire ids of the methods. Each is derived from the service name, the method name and
        /// its signature, so a changed method gets a new id and an old peer gets a clear
        /// `UnknownMethod` instead of misread bytes.
        pub mod method_id {
            #(#id_consts)*
            /// The built-in method answering with the server's [`super::interface_info`].
            pub const INTERFACE: u32 = #interface_id;
        }

        /// This interface as built into this crate (what a server reports, and a client checks).
        /// Each method's wire id and name (how metrics label calls).
        pub const METHOD_NAMES: &[(u32, &str)] = &[#(#method_names),*];

        pub fn interface_info() -> #rpc::stub::InterfaceInfo {
            #rpc::stub::InterfaceInfo {
                service: SERVICE.to_owned(),
                fingerprint: FINGERPRINT,
                methods: ::std::vec::Vec::from([#(#method_infos),*]),
            }
        }

        #(#arg_structs)*

        #(#docs)*
        ///
        /// Implement this to serve the service. Arguments arrive as validated archives, read in
        /// place (no copy); results are archived straight into the connection's buffer.
        #[allow(async_fn_in_trait)]
        pub trait #name: 'static {
            #(#trait_methods)*
        }

        #[doc = #service_fn_doc]
        pub fn service<S: #name>(imp: S) -> #rpc::Service {
            service_rc(::std::rc::Rc::new(imp))
        }

        /// [`service`] over a shared implementation.
        pub fn service_rc<S: #name>(imp: ::std::rc::Rc<S>) -> #rpc::Service {
            #rpc::Service::builder(SERVICE)
                .method_names(METHOD_NAMES)
                #(#registrations)*
                .method(method_id::INTERFACE, |_ctx: #rpc::CallContext, _req: #rpc::Message<()>| async move {
                    ::std::result::Result::<_, #rpc::Status>::Ok(interface_info())
                })
                .build()
        }

        #[doc = #client_doc]
        #[derive(Debug, Clone)]
        pub struct #client_name {
            client: #rpc::Client,
            options: #rpc::CallOptions,
        }

        impl #client_name {
            /// A stub for the instance at `addr` (connects on first call).
            pub fn new(addr: ::std::net::SocketAddr) -> Self {
                Self::from_client(#rpc::Client::new(addr))
            }
            /// A stub over an existing client (sharing its connection).
            pub fn from_client(client: #rpc::Client) -> Self {
                Self { client, options: #rpc::CallOptions::default() }
            }
            /// The same stub with these options on every call (e.g. a timeout).
            pub fn with_options(mut self, options: #rpc::CallOptions) -> Self {
                self.options = options;
                self
            }
            /// The underlying client.
            pub fn client(&self) -> &#rpc::Client {
                &self.client
            }
            /// Check that the server was built from a compatible version of this interface
            /// (the same, or one that only added methods).
            pub async fn check_interface(&self) -> ::std::result::Result<(), #rpc::stub::InterfaceMismatch> {
                #rpc::stub::check_interface(&self.client, method_id::INTERFACE, &interface_info()).await
            }
            #(#client_methods)*
        }

        #one_way_stub
        #multicast_stub

        #[doc = #redirector_doc]
        #[derive(Debug, Clone)]
        pub struct #redirector_name {
            redirector: #rpc::Redirector,
        }

        impl #redirector_name {
            /// A redirector over `instances` with default settings.
            pub fn new(instances: impl ::std::iter::IntoIterator<Item = ::std::net::SocketAddr>) -> Self {
                Self::from_redirector(#rpc::Redirector::new(instances))
            }
            /// A redirector with explicit settings (policy, attempts, timeouts).
            pub fn with_config(
                instances: impl ::std::iter::IntoIterator<Item = ::std::net::SocketAddr>,
                config: #rpc::RedirectConfig,
            ) -> Self {
                Self::from_redirector(#rpc::Redirector::with_config(instances, config))
            }
            /// A typed stub over an existing redirector.
            pub fn from_redirector(redirector: #rpc::Redirector) -> Self {
                Self { redirector }
            }
            /// The untyped redirector (its instance set can be replaced at any time).
            pub fn redirector(&self) -> &#rpc::Redirector {
                &self.redirector
            }
            /// Replace the instances; calls in flight finish where they are.
            pub fn set_instances(&self, instances: impl ::std::iter::IntoIterator<Item = ::std::net::SocketAddr>) {
                self.redirector.set_instances(instances)
            }
            #(#redirector_methods)*
        }

        #json
    }
}

/// `item` with serde derives (through `multispace_rpc::serde`) if it is a struct or enum that
/// does not derive serde itself. Added at emission only: method ids hash the file as written.
fn with_serde(mut item: syn::Item) -> syn::Item {
    let attrs = match &mut item {
        syn::Item::Struct(s) => &mut s.attrs,
        syn::Item::Enum(e) => &mut e.attrs,
        _ => return item,
    };
    let derives_serde = attrs.iter().any(|a| {
        (a.path().is_ident("derive") && quote!(#a).to_string().contains("serde")) || a.path().is_ident("serde")
    });
    if !derives_serde {
        // The derive first: `#[serde]` is its helper attribute, and must come after it.
        attrs.push(
            syn::parse_quote!(#[derive(::multispace_rpc::serde::Serialize, ::multispace_rpc::serde::Deserialize)]),
        );
        attrs.push(syn::parse_quote!(#[serde(crate = "::multispace_rpc::serde")]));
    }
    item
}

/// A type as text for people: `Vec<Point>`, `Option<(String, u32)>`.
pub(crate) fn type_text(ty: &syn::Type) -> String {
    let mut s = quote!(#ty).to_string();
    for (from, to) in [
        (" :: ", "::"),
        (":: ", "::"),
        (" <", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ,", ","),
        ("( ", "("),
        (" )", ")"),
        ("[ ", "["),
        (" ]", "]"),
        (" ;", ";"),
    ] {
        s = s.replace(from, to);
    }
    s
}

/// The first paragraph of a doc comment, on one line.
fn first_paragraph(docs: &[syn::Attribute]) -> String {
    let mut words: Vec<String> = Vec::new();
    for a in docs {
        let syn::Meta::NameValue(nv) = &a.meta else { continue };
        let syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(text), .. }) = &nv.value else { continue };
        let text = text.value();
        // `///` alone is an attribute with an empty string: a blank line.
        for line in text.lines().chain(text.trim().is_empty().then_some("")) {
            let line = line.trim();
            if line.is_empty() {
                if !words.is_empty() {
                    return words.join(" ");
                }
            } else {
                words.push(line.to_owned());
            }
        }
    }
    words.join(" ")
}

/// `json_methods()` and `call_json`: every method by name, with JSON arguments and result.
fn emit_json(iface: &Interface) -> TokenStream {
    let rpc = quote!(::multispace_rpc);
    let json = quote!(#rpc::json);
    let service_name = iface.name.to_string();
    let descriptions = iface.methods.iter().map(|m| {
        let n = m.name.to_string();
        let params = m.args.iter().map(|a| {
            let (n, t) = (a.name.to_string(), type_text(&a.ty));
            quote!((#n, #t))
        });
        let returns = m.ret.as_ref().map_or("()".to_owned(), type_text);
        let one_way = m.kind.is_one_way();
        let doc = first_paragraph(&m.docs);
        quote! {
            #json::JsonMethod { service: SERVICE, name: #n, params: &[#(#params),*], returns: #returns, one_way: #one_way, doc: #doc }
        }
    });
    let arms = iface.methods.iter().enumerate().map(|(i, m)| {
        let c = const_name(&m.name);
        let s = format_ident!("{}", args_struct_name(&m.name));
        let request = match m.args.len() {
            0 => quote! {
                #json::no_args(__m, &args)?;
                let __req = #s {};
            },
            1 => {
                let f = &m.args[0].name;
                quote!(let __req = #s { #f: #json::one_arg(__m, &args)? };)
            }
            _ => {
                let fields = m.args.iter().enumerate().map(|(i, a)| {
                    let f = &a.name;
                    quote!(#f: #json::arg(__m, #i, &__v)?)
                });
                quote! {
                    let __v = #json::split_args(__m, args)?;
                    let __req = #s { #(#fields),* };
                }
            }
        };
        let r = m.ret.as_ref().map_or(quote!(()), |t| quote!(#t));
        let call = quote! {
            client.call::<#s, #r>(method_id::#c, &__req, options).await.map_err(|e| #json::call_failed(__m, e))?
        };
        let answer = if m.ret.is_some() {
            quote!(#json::result(__m, #call.to_owned()))
        } else {
            quote! {
                #call;
                ::std::result::Result::Ok(#rpc::serde_json::Value::Null)
            }
        };
        quote!(#i => { #request #answer })
    });
    let dispatch = if iface.methods.is_empty() {
        quote! {
            let _ = (client, args, options);
            ::std::result::Result::Err(#json::unknown_method(SERVICE, method, json_methods()))
        }
    } else {
        quote! {
            let __methods = json_methods();
            let ::std::option::Option::Some(__i) = #json::find(__methods, method) else {
                return ::std::result::Result::Err(#json::unknown_method(SERVICE, method, __methods));
            };
            let __m = &__methods[__i];
            match __i {
                #(#arms)*
                _ => ::std::result::Result::Err(#json::unknown_method(SERVICE, method, __methods)),
            }
        }
    };
    let call_doc = format!(
        " Call `method` of the `{service_name}` instance behind `client` with JSON arguments: an array of \
         positional values, an object keyed by parameter name, or (one parameter) the bare value; `null` for \
         none. The arguments become the same request the typed client sends; the result comes back as JSON \
         (`null` for none). One-way methods are called reliably. Method names match exactly, or else \
         ignoring case, `_` and `-`."
    );
    quote! {
        /// Every method, described for JSON callers and help texts (see [`call_json`]).
        pub fn json_methods() -> &'static [#json::JsonMethod] {
            const METHODS: &[#json::JsonMethod] = &[#(#descriptions),*];
            METHODS
        }

        #[doc = #call_doc]
        pub async fn call_json(
            client: &#rpc::Client,
            method: &str,
            args: #rpc::serde_json::Value,
            options: #rpc::CallOptions,
        ) -> ::std::result::Result<#rpc::serde_json::Value, #json::JsonCallError> {
            #dispatch
        }
    }
}

/// A method's doc comments, plus a clippy allowance when its generated signatures (receiver,
/// call context and arguments) are longer than clippy's limit: the interface decides that.
fn method_attrs(m: &Method) -> TokenStream {
    let docs = &m.docs;
    let allow = (m.args.len() + 2 > 7).then(|| quote!(#[allow(clippy::too_many_arguments)]));
    quote!(#(#docs)* #allow)
}
