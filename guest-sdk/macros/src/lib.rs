//! The `#[wasmq_guest::job]` attribute: turns a plain function into the component's `run` export.
//!
//! It owns only code generation; every type and codec the generated code uses lives in
//! `wasmq-guest` (`wasmq_guest::__private`). Signature mistakes are reported at the user's tokens.

use proc_macro::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType, Type, parse_macro_input};

/// Marks the function that runs the job.
///
/// Accepted shapes (`A` is any `DeserializeOwned` type or `wasmq_guest::Bytes`; `R` is any
/// `Serialize` type or `Bytes`; `E` converts into `wasmq_guest::JobError`):
///
/// ```ignore
/// fn name() -> Result<R, E>
/// fn name(args: A) -> Result<R, E>
/// fn name(info: &JobInfo, args: A) -> Result<R, E>
/// ```
///
/// One function per crate carries the attribute: it becomes the component's `run` export.
#[proc_macro_attribute]
pub fn job(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = proc_macro2::TokenStream::from(attr);
        return syn::Error::new_spanned(attr, "`#[job]` takes no arguments")
            .to_compile_error()
            .into();
    }
    let func = parse_macro_input!(item as ItemFn);
    match expand(&func) {
        Ok(tokens) => tokens.into(),
        Err(err) => {
            let err = err.to_compile_error();
            quote!(#func #err).into()
        }
    }
}

fn expand(func: &ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &func.sig;
    if let Some(asyncness) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            asyncness,
            "a wasmq job function cannot be `async`: `run` is a blocking call",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a wasmq job function cannot be generic: the component exports one concrete `run`",
        ));
    }
    let ReturnType::Type(_, ret_ty) = &sig.output else {
        return Err(syn::Error::new_spanned(
            sig,
            "a wasmq job function returns `Result<T, E>` (T: Serialize or Bytes; E: Into<JobError>)",
        ));
    };

    let mut params = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new_spanned(
                    r,
                    "a wasmq job function is a free function: it cannot take `self`",
                ));
            }
            FnArg::Typed(pat) => params.push(pat),
        }
    }

    let name = &sig.ident;
    let call_args = match params.as_slice() {
        [] => quote!(),
        [args] => {
            let decode = decode_args(&args.ty);
            quote!(#decode)
        }
        [info, args] => {
            let is_ref_info = matches!(&*info.ty, Type::Reference(r) if r.mutability.is_none());
            if !is_ref_info {
                return Err(syn::Error::new_spanned(
                    &info.ty,
                    "with two parameters, the first must be `&JobInfo`",
                ));
            }
            let info_ty = &info.ty;
            let info_check = quote_spanned! {info_ty.span()=>
                {
                    let info: #info_ty = &__wasmq_info;
                    info
                }
            };
            let decode = decode_args(&args.ty);
            quote!(#info_check, #decode)
        }
        [_, _, extra, ..] => {
            return Err(syn::Error::new_spanned(
                extra,
                "a wasmq job function takes at most two parameters: `(info: &JobInfo, args: A)`",
            ));
        }
    };

    let result = quote_spanned! {ret_ty.span()=>
        match #name(#call_args) {
            ::core::result::Result::Ok(value) => value,
            ::core::result::Result::Err(error) => {
                return ::core::result::Result::Err(
                    ::core::convert::Into::<::wasmq_guest::JobError>::into(error),
                );
            }
        }
    };
    let encode = quote_spanned! {ret_ty.span()=>
        (&::wasmq_guest::__private::codec_of(&__wasmq_value)).encode(__wasmq_value)
    };

    Ok(quote! {
        #func

        const _: () = {
            struct __WasmqJob;

            impl ::wasmq_guest::__private::Guest for __WasmqJob {
                fn run(
                    __wasmq_info: ::wasmq_guest::__private::WitJobInfo,
                    __wasmq_args: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<::std::vec::Vec<u8>, ::wasmq_guest::__private::WitJobError> {
                    #[allow(unused_imports)]
                    use ::wasmq_guest::__private::{DecodeBytes, DecodeJson, EncodeBytes, EncodeJson};
                    ::wasmq_guest::__private::install_panic_hook();
                    #[allow(unused_variables)]
                    let __wasmq_run = |__wasmq_info: ::wasmq_guest::__private::WitJobInfo,
                                       __wasmq_args: ::std::vec::Vec<u8>|
                     -> ::core::result::Result<::std::vec::Vec<u8>, ::wasmq_guest::JobError> {
                        let __wasmq_value = #result;
                        #encode
                    };
                    __wasmq_run(__wasmq_info, __wasmq_args)
                        .map_err(::wasmq_guest::__private::into_wit_error)
                }
            }

            ::wasmq_guest::bindings::__export_job!(__WasmqJob with_types_in ::wasmq_guest::bindings);
        };
    })
}

/// Decodes the raw args into the parameter's type; errors point at that type.
fn decode_args(ty: &Type) -> proc_macro2::TokenStream {
    quote_spanned! {ty.span()=>
        (&::wasmq_guest::__private::Codec::<#ty>::new()).decode(__wasmq_args)?
    }
}
