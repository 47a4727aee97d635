//! The rewrite of the handler.
//!
//! Input:
//! ```text
//! #[post("/payments")]                       // route attributes, if any, stay on the outer fn
//! #[idempotent(ttl = "24h")]
//! pub async fn create(body: web::Json<T>, db: web::Data<Db>) -> impl Responder { … }
//! ```
//! Output:
//! ```text
//! #[post("/payments")]
//! pub async fn create(__idem_req: HttpRequest, __idem_payload: web::Payload) -> HttpResponse {
//!     async fn create(body: web::Json<T>, db: web::Data<Db>) -> impl Responder { … }
//!     const __IDEM_POLICY: Policy = Policy { endpoint: concat!(module_path!(), "::create"), … };
//!     run(__idem_req, __idem_payload, &__IDEM_POLICY, |__idem_req, mut __idem_payload| async move {
//!         let __idem_arg0 = match <web::Json<T> as FromRequest>::from_request(…).await {
//!             Ok(v) => v,
//!             Err(e) => return Err(e.into()), // not cached: the runtime releases the key
//!         };
//!         let __idem_arg1 = …;                // each extractor in turn, with its own span
//!         let __idem_out = create(__idem_arg0, __idem_arg1).await;
//!         Ok(Responder::respond_to(__idem_out, &__idem_req).map_into_boxed_body())
//!     }).await
//! }
//! ```
//! The outer fn takes only the raw request and payload, so the runtime can buffer the body before
//! any extractor (or decompression) touches it, then re-run the handler's own extractors on it.
//! The inner fn keeps the user's name (it shadows the outer one inside it), so attributes such
//! as `#[tracing::instrument]` name their span after the handler.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn};

use crate::args::Args;

/// Attributes that must stay on the function actix-web registers: route macros (whichever
/// order they come in), docs and `cfg`. Everything else concerns the body and goes inside.
fn stays_outside(attr: &syn::Attribute) -> bool {
    const ROUTES: &[&str] = &[
        "get", "post", "put", "delete", "patch", "head", "options", "trace", "connect", "route",
        "routes", "doc", "cfg",
    ];
    attr.path()
        .segments
        .last()
        .is_some_and(|s| ROUTES.contains(&s.ident.to_string().as_str()))
}

/// `#[utoipa::path]` below `#[idempotent]` must still read the handler as written (its `Json<T>`
/// body, its `Path` parameters), not the raw-request function the rewrite registers: the
/// function is handed back with `#[utoipa::path]` moved above this attribute, so utoipa expands
/// first and this attribute then expands as usual. `None` when there is no such attribute.
pub(crate) fn utoipa_first(args: &Args, attr: TokenStream, item: &ItemFn) -> Option<TokenStream> {
    let is_utoipa_path = |a: &syn::Attribute| {
        let names: Vec<String> = a
            .path()
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect();
        names.len() >= 2 && names[names.len() - 2..] == ["utoipa", "path"]
    };
    let position = item.attrs.iter().position(is_utoipa_path)?;
    let mut item = item.clone();
    let utoipa = item.attrs.remove(position);
    let krate = &args.krate;
    Some(quote! {
        #utoipa
        #[#krate::idempotent(#attr)]
        #item
    })
}

pub(crate) fn expand(args: &Args, item: ItemFn) -> TokenStream {
    let krate = &args.krate;
    let private = quote!(#krate::__private_v0_1);
    let (outer_attrs, inner_attrs): (Vec<_>, Vec<_>) =
        item.attrs.iter().cloned().partition(stays_outside);
    let vis = &item.vis;
    let name = &item.sig.ident;
    let name_str = name.to_string();
    let call_site = Span::call_site();

    let inner_sig = item.sig.clone();
    let body = &item.block;

    let types: Vec<&syn::Type> = item
        .sig
        .inputs
        .iter()
        .filter_map(|a| match a {
            FnArg::Typed(t) => Some(&*t.ty),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let vars: Vec<syn::Ident> = (0..types.len())
        .map(|i| format_ident!("__idem_arg{}", i))
        .collect();
    // One extractor at a time, in order (as actix's tuple extractor creates them), each under
    // its own type's span: a type that is not an extractor is reported at that argument.
    let extract = types.iter().zip(&vars).map(|(ty, var)| {
        quote_spanned! {ty.span()=>
            let #var = match <#ty as #private::actix_web::FromRequest>::from_request(
                &__idem_req,
                &mut __idem_payload,
            )
            .await
            {
                ::core::result::Result::Ok(v) => v,
                ::core::result::Result::Err(e) => {
                    return ::core::result::Result::Err(::core::convert::Into::<#private::actix_web::Error>::into(e));
                }
            };
        }
    });
    let extract = quote!(#(#extract)*);
    let payload_param = if types.is_empty() {
        quote!(_)
    } else {
        quote!(mut __idem_payload)
    };
    let ret_span = match &item.sig.output {
        syn::ReturnType::Type(_, ty) => ty.span(),
        syn::ReturnType::Default => item.sig.span(),
    };
    let respond = quote_spanned! {ret_span=>
        #private::actix_web::Responder::respond_to(__idem_out, &__idem_req).map_into_boxed_body()
    };

    let policy = policy_literal(
        args,
        &private,
        quote!(::core::concat!(::core::module_path!(), "::", #name_str)),
    );
    // Webhook deliveries are a cargo feature: without it, a compile error that says so.
    let needs_webhook = (args.on_conflict == crate::values::OnConflict::Webhook)
        .then(|| quote!(const _: () = #private::needs_webhook_feature();));

    quote_spanned! {call_site=>
        #(#outer_attrs)*
        #vis async fn #name(
            __idem_req: #private::actix_web::HttpRequest,
            __idem_payload: #private::actix_web::web::Payload,
        ) -> #private::actix_web::HttpResponse {
            #(#inner_attrs)*
            #inner_sig #body
            #needs_webhook

            const __IDEM_POLICY: #private::Policy = #policy;
            #private::document!(#name_str, __IDEM_POLICY);
            #private::run(
                __idem_req,
                __idem_payload,
                &__IDEM_POLICY,
                |__idem_req: #private::actix_web::HttpRequest, #payload_param: #private::actix_web::dev::Payload| async move {
                    #extract
                    let __idem_out = #name(#(#vars),*).await;
                    ::core::result::Result::Ok(#respond)
                },
            )
            .await
        }
    }
}

/// The `Policy` literal of `args`, its `endpoint` (the handler's path, what owns a name) given.
pub(crate) fn policy_literal(
    args: &Args,
    private: &TokenStream,
    endpoint: TokenStream,
) -> TokenStream {
    let ttl = args.ttl;
    let lease = args.lease;
    let required = args.required;
    let max_body = args.max_body as usize;
    let on_conflict = args.on_conflict.tokens(private);
    let wait_timeout = args.wait_timeout;
    let respond_async_after = match args.respond_async_after {
        Some(ms) => quote!(::core::option::Option::Some(#private::millis(#ms))),
        None => quote!(::core::option::Option::None),
    };
    let client_error_ttl = match args.client_error_ttl {
        Some(ms) => quote!(::core::option::Option::Some(#private::millis(#ms))),
        None => quote!(::core::option::Option::None),
    };
    let guarantee = args.guarantee.tokens(private);
    let pointers = &args.fingerprint;
    let replay_headers = &args.replay_headers;
    let redact = &args.redact;
    let store = match &args.store {
        Some(name) => quote!(::core::option::Option::Some(#name)),
        None => quote!(::core::option::Option::None),
    };
    let endpoint_name = match &args.name {
        Some(name) => quote!(::core::option::Option::Some(#name)),
        None => quote!(::core::option::Option::None),
    };
    let transactional = args.transactional;
    let key_sources = args
        .key
        .iter()
        .map(|(kind, name)| kind.tokens(private, name));
    let on_store_error = args.on_store_error.tokens(private);

    quote! {
        #private::Policy {
            endpoint: #endpoint,
            name: #endpoint_name,
            ttl: #private::millis(#ttl),
            client_error_ttl: #client_error_ttl,
            lease: #private::millis(#lease),
            guarantee: #guarantee,
            on_conflict: #on_conflict,
            required: #required,
            on_store_error: #on_store_error,
            max_body: #max_body,
            wait_timeout: #private::millis(#wait_timeout),
            respond_async_after: #respond_async_after,
            fingerprint: &[#(#pointers),*],
            replay_headers: &[#(#replay_headers),*],
            store: #store,
            transactional: #transactional,
            key: &[#(#key_sources),*],
            redact: &[#(#redact),*],
        }
    }
}
