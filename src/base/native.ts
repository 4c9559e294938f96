// The generated Node-API loader (napi build --esm); everything native goes through here.
export * as native from '../../index.js';
export type * from '../../index.js';
