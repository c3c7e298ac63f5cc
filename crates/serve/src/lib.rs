//! StreamRec serving: the HTTP front end for the engine (KServe v2 REST).
