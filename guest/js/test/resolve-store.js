// Registered with `node --import`: resolves the store import of the SDK to
// the fake store, so the SDK runs natively under `node --test`.
import { register } from 'node:module';

register(
  'data:text/javascript,' +
    encodeURIComponent(`
      export async function resolve(specifier, context, next) {
        if (specifier === 'worldinterface:contextstore/store@0.1.0') {
          return { url: ${JSON.stringify(new URL('./fake-store.js', import.meta.url).href)}, shortCircuit: true };
        }
        return next(specifier, context);
      }`),
);
