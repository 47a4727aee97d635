//! `idem::policy!(…)`: one endpoint's policy for the tower layer, from the attribute's options
//! (the same parser, values and rules), as a `&'static Policy`.

use proc_macro2::TokenStream;
use quote::quote;

use crate::args::Args;
use crate::values::OnConflict;

/// The expansion of `policy!(attr)`, or the errors that refuse it.
pub(crate) fn expand(attr: TokenStream) -> TokenStream {
    let args = match Args::parse(attr.clone()) {
        Ok(args) => args,
        Err(e) => return e.to_compile_error(),
    };
    let refuse = |why: &str| syn::Error::new_spanned(&attr, why).to_compile_error();
    let Some(name) = &args.name else {
        return refuse(
            "`idem::policy!` needs `name = \"…\"`: a tower layer does not know the route a \
             request matched, and the name is what its records are found by (give an actix-web \
             handler of the same endpoint the same name)",
        );
    };
    let not_yet = match args.on_conflict {
        _ if args.transactional => Some("transactional"),
        _ => None,
    };
    if let Some(what) = not_yet {
        return refuse(&format!(
            "{what} is not available behind the tower layer yet; it works with \
             #[idempotent] on actix-web"
        ));
    }
    let krate = &args.krate;
    let private = quote!(#krate::__private_v0_1);
    let policy = crate::expand::policy_literal(&args, &private, quote!(#name));
    // Webhook deliveries are a cargo feature: without it, a compile error that says so.
    let needs_webhook = (args.on_conflict == OnConflict::Webhook)
        .then(|| quote!(const _: () = #private::needs_webhook_feature();));
    quote! {
        {
            #needs_webhook
            const __IDEM_POLICY: #private::Policy = #policy;
            &__IDEM_POLICY
        }
    }
}
