/**
 * The build spec: what image to build, read from YAML, JSON, XML or genfs-style flags,
 * validated field by field, normalised (the canonical form), digested (the request
 * checksum) and written back as XML; the field table; the distributions catalogue; root
 * passwords. docs/build.md documents every field.
 */
export {
  type BuildSpec,
  type CanonicalFile,
  type CanonicalSpec,
  type SpecFile,
  type SpecOptions,
  type SpecValidation,
  canonicalJson,
  canonicalSpec,
  hostPathIssues,
  loadSpec,
  parseSpec,
  parseTarget,
  SPEC_VERSION,
  specDigest,
  specFromObject,
  setOnChain,
  stableStringify,
  treeDigest,
  validateSpec,
} from './spec.js';
export { type SpecFlags, specFromFlags } from './flags.js';
export { type SpecFormat, formatOf, parseText, sniffFormat } from './formats.js';
export { SpecError, type SpecIssue } from './errors.js';
export { specToXml } from './xml.js';
export * from './fields.js';
export * from './distros.js';
export { deriveSalt, sha512Crypt, verifySha512Crypt } from './password.js';
